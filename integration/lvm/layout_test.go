package lvm

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const layoutXattr = "trusted.volfs.layout"

// lvPlacement is what lvs says about where an LV's bytes are.
type lvPlacement struct {
	segtype string
	stripes int
	pvs     []string // the PVs it uses, following RAID images down to them
}

// placement reads an LV's segment type, stripe count and PVs with lvs
// (not with volfs's parser).
func (e *env) placement(name string) lvPlacement {
	e.t.Helper()
	cmd := exec.Command("lvs", "-a", "--reportformat", "json", "-o", "lv_name,segtype,stripes,devices", e.vg)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("lvs: %v\n%s", err, stderr.String())
	}
	var rep struct {
		Report []struct {
			LV []map[string]string `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		e.t.Fatalf("lvs json: %v\n%s", err, stdout.String())
	}
	rows := map[string][]map[string]string{} // one row per segment
	for _, r := range rep.Report {
		for _, row := range r.LV {
			rows[row["lv_name"]] = append(rows[row["lv_name"]], row)
		}
	}
	segs, ok := rows[name]
	if !ok {
		e.t.Fatalf("no LV %s/%s:\n%s", e.vg, name, stdout.String())
	}
	p := lvPlacement{segtype: segs[0]["segtype"]}
	p.stripes, _ = strconv.Atoi(segs[0]["stripes"])
	var walk func(lv string, depth int)
	walk = func(lv string, depth int) {
		for _, seg := range rows[lv] {
			for _, d := range strings.Split(seg["devices"], ",") {
				d, _, _ = strings.Cut(d, "(")
				switch {
				case d == "":
				case strings.HasPrefix(d, "/dev/"):
					if !slices.Contains(p.pvs, d) {
						p.pvs = append(p.pvs, d)
					}
				case depth < 4:
					walk("["+d+"]", depth+1)
				}
			}
		}
	}
	walk(name, 0)
	slices.Sort(p.pvs)
	return p
}

func getLayout(t *testing.T, path string) string {
	t.Helper()
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, layoutXattr, buf)
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", path, layoutXattr, err)
	}
	return string(buf[:n])
}

func setLayout(path, value string) error {
	return unix.Setxattr(path, layoutXattr, []byte(value), 0)
}

// lsFile is one file of volfs ls --json, as far as layouts go.
type lsFile struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Layout   string `json:"layout"`
	Health   string `json:"health"`
	Degraded bool   `json:"degraded"`
}

func lsLayouts(t *testing.T, m *mount) map[string]lsFile {
	t.Helper()
	var l struct {
		Files []lsFile `json:"files"`
	}
	runJSON(t, &l, "ls", "--json", m.dir)
	out := map[string]lsFile{}
	for _, f := range l.Files {
		out[f.Name] = f
	}
	return out
}

// appendFile appends src to dst with dd through the mount (growth).
func appendFile(t *testing.T, src, dst string) {
	t.Helper()
	sh(t, "dd", "if="+src, "of="+dst, "bs=1M", "oflag=append", "conv=notrunc,fsync", "status=none")
}

func concat(t *testing.T, e *env, name string, parts ...string) string {
	t.Helper()
	var b []byte
	for _, p := range parts {
		d, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, d...)
	}
	p := e.base + "/" + name
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLayoutMountFlags: --layout/--mirrors/--stripes make new files RAID1
// or striped LVs over distinct PVs, which grow as files do; impossible
// requests are refused at mount.
func TestLayoutMountFlags(t *testing.T) {
	e := newVGOn(t, 3)
	e.thinPool("pool", "64m")
	refused, err := os.MkdirTemp(e.base, "refused-")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--layout", "raid1", "--mirrors", "3"}, 1, "needs 4 PVs with free space"},
		{[]string{"--layout", "raid10", "--stripes", "2"}, 1, "needs 4 PVs with free space"},
		{[]string{"--layout", "raid5", "--stripes", "1"}, 2, "raid5 needs 2 to"},
		{[]string{"--layout", "raid7"}, 2, "unknown type"},
		{[]string{"--layout", "linear", "--mirrors", "1"}, 2, "linear takes no mirrors"},
		{[]string{"--stripes", "2"}, 2, "go with --layout"},
		{[]string{"--thin-pool", "pool", "--layout", "raid1"}, 2, "take the layout of their pool"},
	} {
		args := append(append([]string{"mount", "--vg", e.vg}, c.args...), refused)
		cmd := exec.Command(volfsBin, args...)
		out, err := cmd.CombinedOutput()
		code := cmd.ProcessState.ExitCode()
		if err == nil || code != c.code || !strings.Contains(string(out), c.want) {
			t.Errorf("volfs %s: exit %d (%v), want %d and %q:\n%s", strings.Join(args, " "), code, err, c.code, c.want, out)
		}
		if mounted(refused) {
			t.Fatalf("volfs %s mounted", strings.Join(args, " "))
		}
	}
	if files := e.files(); len(files) != 0 {
		t.Fatalf("refused mounts left LVs: %v", files)
	}

	m := e.mount("--layout", "raid1", "--mirrors", "1")
	src := e.file("src", 8*mib+12345, 1)
	sh(t, "cp", src, m.path("r1"))
	sameData(t, src, m.path("r1"))
	if p := e.placement("r1"); p.segtype != "raid1" || p.stripes != 2 || len(p.pvs) != 2 {
		t.Errorf("r1 under --layout raid1 --mirrors 1: %+v, want raid1 with 2 images on 2 PVs", p)
	}
	if v := getLayout(t, m.path("r1")); v != "raid1 mirrors=1" {
		t.Errorf("%s of r1 = %q", layoutXattr, v)
	}
	more := e.file("more", 20*mib, 2)
	appendFile(t, more, m.path("r1"))
	sameData(t, concat(t, e, "r1-want", src, more), m.path("r1"))
	if p, l := e.placement("r1"), e.lv("r1"); p.segtype != "raid1" || l.Size < 28*mib+12345 {
		t.Errorf("r1 after growing: %+v, %d bytes", p, l.Size)
	}
	if f := lsLayouts(t, m)["r1"]; f.Layout != "raid1 mirrors=1" || f.Kind != "raid1" || f.Degraded ||
		(f.Health != "ok" && !strings.HasPrefix(f.Health, "syncing")) {
		t.Errorf("volfs ls --json r1: %+v", f)
	}
	if out := sh(t, volfsBin, "ls", m.dir); !strings.Contains(out, "raid1 mirrors=1") || !strings.Contains(out, "LAYOUT") {
		t.Errorf("volfs ls:\n%s", out)
	}
	m.umount()

	m = e.mount("--layout", "striped", "--stripes", "2")
	sh(t, "cp", src, m.path("s2"))
	sameData(t, src, m.path("s2"))
	if p := e.placement("s2"); p.segtype != "striped" || p.stripes != 2 || len(p.pvs) != 2 {
		t.Errorf("s2 under --layout striped --stripes 2: %+v, want striped over 2 PVs", p)
	}
	appendFile(t, more, m.path("s2"))
	sameData(t, concat(t, e, "s2-want", src, more), m.path("s2"))
	if p, l := e.placement("s2"), e.lv("s2"); p.segtype != "striped" || p.stripes != 2 || l.Size%(2*extent) != 0 {
		t.Errorf("s2 after growing: %+v, %d bytes (want whole stripes of 2 extents)", p, l.Size)
	}
	if f := lsLayouts(t, m)["s2"]; f.Layout != "striped stripes=2" {
		t.Errorf("volfs ls --json s2: %+v", f)
	}
	sameData(t, concat(t, e, "r1-want2", src, more), m.path("r1"))
}

// TestLayoutXattr: trusted.volfs.layout decides how a file created but not
// yet written gets its LV, and converts an image with data online (open
// through the conversion); impossible requests change nothing.
func TestLayoutXattr(t *testing.T) {
	e := newVGOn(t, 3)
	m := e.mount()

	f, err := os.Create(m.path("p"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if v := getLayout(t, m.path("p")); v != "linear" {
		t.Errorf("%s of a new file = %q, want the mount's default linear", layoutXattr, v)
	}
	for _, bad := range []string{"raid1 mirrors=3", "raid9", "striped stripes=1", "raid1 mirrors=x"} {
		if err := setLayout(m.path("p"), bad); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("set %s %q on a new file: %v, want EINVAL", layoutXattr, bad, err)
		}
	}
	if !strings.Contains(m.logText(), "needs 4 PVs with free space") {
		t.Errorf("the log does not say why raid1 mirrors=3 was refused:\n%s", m.logText())
	}
	// No lvs here: a child process closing its inherited copy of f at
	// exec sends a FLUSH, which gives the file its volume.
	if _, err := os.Lstat("/dev/" + e.vg + "/p"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the LV of a file not written yet exists (/dev/%s/p: %v)", e.vg, err)
	}
	if err := setLayout(m.path("p"), "raid1 mirrors=1"); err != nil {
		t.Fatalf("set %s on a new file: %v", layoutXattr, err)
	}
	if v := getLayout(t, m.path("p")); v != "raid1 mirrors=1" {
		t.Errorf("%s of the new file after set = %q", layoutXattr, v)
	}
	psrc := e.file("psrc", 4*mib+100, 5)
	data, _ := os.ReadFile(psrc)
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if p := e.placement("p"); p.segtype != "raid1" || p.stripes != 2 || len(p.pvs) != 2 {
		t.Errorf("p created after %s=raid1 mirrors=1: %+v", layoutXattr, p)
	}
	sameData(t, psrc, m.path("p"))

	// Online conversion of an image with data, open through it.
	src := e.file("src", 12*mib, 3)
	sh(t, "cp", src, m.path("conv"))
	if p := e.placement("conv"); p.segtype != "linear" || len(p.pvs) != 1 {
		t.Fatalf("conv before conversion: %+v", p)
	}
	fd, err := os.OpenFile(m.path("conv"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := setLayout(m.path("conv"), "raid1 mirrors=3"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("convert to raid1 mirrors=3 with 3 PVs: %v, want EINVAL", err)
	}
	if p := e.placement("conv"); p.segtype != "linear" {
		t.Errorf("a refused conversion changed the LV: %+v", p)
	}
	if err := setLayout(m.path("conv"), "raid1 mirrors=1"); err != nil {
		t.Fatalf("convert conv to raid1: %v\n%s", err, m.logText())
	}
	if p := e.placement("conv"); p.segtype != "raid1" || p.stripes != 2 || len(p.pvs) != 2 {
		t.Errorf("conv after conversion to raid1: %+v", p)
	}
	if v := getLayout(t, m.path("conv")); v != "raid1 mirrors=1" {
		t.Errorf("%s of conv after conversion = %q", layoutXattr, v)
	}
	sameData(t, src, m.path("conv"))
	// The fd opened before the conversion writes on, past the end.
	tail := e.file("tail", 6*mib, 4)
	tb, _ := os.ReadFile(tail)
	if _, err := fd.WriteAt(tb, 12*mib); err != nil {
		t.Fatalf("write through an fd opened before the conversion: %v", err)
	}
	if err := fd.Sync(); err != nil {
		t.Fatal(err)
	}
	sameData(t, concat(t, e, "conv-want", src, tail), m.path("conv"))
	if f := lsLayouts(t, m)["conv"]; f.Layout != "raid1 mirrors=1" || f.Kind != "raid1" {
		t.Errorf("volfs ls --json conv: %+v", f)
	}
	fd.Close()

	m.remount()
	if v := getLayout(t, m.path("conv")); v != "raid1 mirrors=1" {
		t.Errorf("%s of conv after remount = %q", layoutXattr, v)
	}
	sameData(t, concat(t, e, "conv-want2", src, tail), m.path("conv"))
	// Back to linear: LVM removes images only from an array in sync.
	waitFor(t, "conv in sync", 5*time.Minute, func() bool {
		out, _ := try("lvs", "--noheadings", "-o", "sync_percent", e.vg+"/conv")
		return strings.TrimSpace(out) == "100.00"
	})
	// The CLI shows it and changes it back to linear.
	if out := sh(t, volfsBin, "layout", m.path("conv")); !strings.Contains(out, "layout: raid1 mirrors=1\n") ||
		!strings.Contains(out, "health: ok\n") || !strings.Contains(out, "in sync: ") {
		t.Errorf("volfs layout conv:\n%s", out)
	}
	if out, err := try(volfsBin, "layout", m.path("conv"), "raid1", "mirrors=3"); err == nil ||
		!strings.Contains(out, `layout "raid1 mirrors=3" refused`) {
		t.Errorf("volfs layout conv raid1 mirrors=3 with 3 PVs: %v\n%s", err, out)
	}
	if out, err := try(volfsBin, "layout", m.path("conv"), "linear"); err != nil {
		t.Fatalf("volfs layout conv linear: %v\n%s\n%s", err, out, m.logText())
	}
	if p := e.placement("conv"); p.segtype != "linear" || len(p.pvs) != 1 {
		t.Errorf("conv after conversion to linear: %+v", p)
	}
	sameData(t, concat(t, e, "conv-want3", src, tail), m.path("conv"))
}

// TestLayoutDegraded: a raid1 image one of whose images fails (its
// device-mapper table, on one PV, switched to the error target) keeps
// serving its data, and volfs ls and volfs status say it is degraded.
func TestLayoutDegraded(t *testing.T) {
	e := newVGOn(t, 3)
	m := e.mount("--layout", "raid1", "--mirrors", "1")
	src := e.file("src", 8*mib, 7)
	sh(t, "cp", src, m.path("r"))
	if p := e.placement("r"); p.segtype != "raid1" || len(p.pvs) != 2 {
		t.Fatalf("r: %+v", p)
	}
	waitFor(t, "r in sync", 5*time.Minute, func() bool {
		out, _ := try("lvs", "--noheadings", "-o", "sync_percent", e.vg+"/r")
		return strings.TrimSpace(out) == "100.00"
	})
	if f := lsLayouts(t, m)["r"]; f.Health != "ok" || f.Degraded {
		t.Fatalf("volfs ls --json r before the failure: %+v", f)
	}
	// The second image's device: VG-r_rimage_1 (dashes doubled).
	dm := strings.ReplaceAll(e.vg, "-", "--") + "-r_rimage_1"
	sectors := strings.TrimSpace(sh(t, "blockdev", "--getsz", "/dev/mapper/"+dm))
	sh(t, "dmsetup", "suspend", dm)
	sh(t, "dmsetup", "load", dm, "--table", "0 "+sectors+" error")
	sh(t, "dmsetup", "resume", dm)
	t.Logf("dmsetup table %s: %s", dm, sh(t, "dmsetup", "table", dm))

	// Writes and reads go on; the failed image is dropped by dm-raid.
	// An overwrite, not an append: growing the LV would reload the
	// image's table from LVM's metadata, healing it.
	more := e.file("more", 4*mib, 8)
	sh(t, "dd", "if="+more, "of="+m.path("r"), "bs=1M", "conv=notrunc,fsync", "status=none")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	rest := e.base + "/src-rest"
	if err := os.WriteFile(rest, b[4*mib:], 0o644); err != nil {
		t.Fatal(err)
	}
	want := concat(t, e, "r-want", more, rest)
	sameData(t, want, m.path("r"))
	if got := strings.TrimSpace(sh(t, "dmsetup", "table", dm)); !strings.HasSuffix(got, "error") {
		t.Fatalf("the failed image's table changed back: %s", got)
	}
	t.Logf("dmsetup status %s: %s", strings.ReplaceAll(e.vg, "-", "--")+"-r",
		sh(t, "dmsetup", "status", strings.ReplaceAll(e.vg, "-", "--")+"-r"))
	var f lsFile
	waitFor(t, "volfs ls says r is degraded", time.Minute, func() bool {
		f = lsLayouts(t, m)["r"]
		return f.Degraded
	})
	if !strings.HasPrefix(f.Health, "degraded") || f.Layout != "raid1 mirrors=1" {
		t.Errorf("volfs ls --json r after the failure: %+v", f)
	}
	if out := sh(t, volfsBin, "ls", m.dir); !strings.Contains(out, "degraded") {
		t.Errorf("volfs ls does not say degraded:\n%s", out)
	}
	var st struct {
		Warnings []string `json:"warnings"`
	}
	runJSON(t, &st, "status", "--json", m.dir)
	if len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "image r (raid1 mirrors=1) is degraded") {
		t.Errorf("volfs status --json warnings: %q", st.Warnings)
	}
	t.Logf("lvs: %s", sh(t, "lvs", "-a", "-o", "lv_name,segtype,lv_attr,lv_health_status,sync_percent,devices", e.vg))
	// The report volfs reads (volmap/lvm lvFields), for its fixtures.
	t.Logf("lvs report:\n%s", sh(t, "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
		"lv_name,lv_uuid,lv_size,lv_attr,lv_tags,pool_lv,data_percent,lv_role,lv_layout,segtype,lv_dm_path,"+
			"lv_active,lv_skip_activation,lv_kernel_major,lv_kernel_minor,chunk_size,discards,lv_time,"+
			"vg_missing_pv_count,stripes,data_stripes,lv_health_status,sync_percent", e.vg))
	sameData(t, want, m.path("r"))
}
