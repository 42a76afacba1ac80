package lvm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
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
	// SyncPercent is how far a RAID volume's copies are in sync.
	SyncPercent *float64 `json:"sync_percent"`
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
	e.waitInSync("conv")
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

// inSync reports whether LVM says the RAID LV's copies are complete
// (stdout only: with a PV missing, lvs warns on stderr).
func (e *env) inSync(name string) bool {
	cmd := exec.Command("lvs", "--noheadings", "-o", "sync_percent", e.vg+"/"+name)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, _ := cmd.Output()
	return strings.TrimSpace(string(out)) == "100.00"
}

func (e *env) waitInSync(name string) {
	e.t.Helper()
	waitFor(e.t, name+" in sync", 5*time.Minute, func() bool { return e.inSync(name) })
}

// waitTrimmed waits for the LV of a file closed for the last time to be
// cut back to n bytes (volfs grows LVs ahead of writes and trims the tail
// after the last close, in the background).
func (e *env) waitTrimmed(name string, n int64) {
	e.t.Helper()
	waitFor(e.t, name+" trimmed", time.Minute, func() bool { return e.lv(name).Size == n })
}

// lvsText is every LV of the VG with its type, size and devices: what a
// refused request must leave as it was.
func (e *env) lvsText() string {
	e.t.Helper()
	return sh(e.t, "lvs", "-a", "--noheadings", "--units", "b", "-o", "lv_name,segtype,lv_size,devices", e.vg)
}

// slowRAIDSync caps the kernel's RAID resync and recovery at kib KiB/s
// (md's speed_limit_min and _max, which dm-raid follows) until restore,
// or the end of the test.
func slowRAIDSync(t *testing.T, kib int) (restore func()) {
	t.Helper()
	sh(t, "modprobe", "dm-raid")
	const dir = "/proc/sys/dev/raid/"
	old := map[string][]byte{}
	for _, f := range []string{"speed_limit_min", "speed_limit_max"} {
		b, err := os.ReadFile(dir + f)
		if err != nil {
			t.Fatal(err)
		}
		old[f] = b
	}
	set := func(f string, b []byte) {
		if err := os.WriteFile(dir+f, b, 0o644); err != nil {
			t.Errorf("%s%s: %v", dir, f, err)
		}
	}
	set("speed_limit_min", []byte(strconv.Itoa(kib/2)))
	set("speed_limit_max", []byte(strconv.Itoa(kib)))
	done := false
	restore = func() {
		if !done {
			done = true
			set("speed_limit_max", old["speed_limit_max"])
			set("speed_limit_min", old["speed_limit_min"])
		}
	}
	t.Cleanup(restore)
	return restore
}

// fioArgs is a fio job that overwrites size bytes of path in 64 KiB blocks
// in random order, each block carrying a crc32c and its offset, and then
// reads them all back and checks them (extra: more options).
func fioArgs(path, size string, extra ...string) []string {
	return append([]string{"--name=verify", "--filename=" + path, "--rw=randwrite", "--bs=64k", "--size=" + size,
		"--ioengine=psync", "--direct=1", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
		"--do_verify=1", "--thread"}, extra...)
}

// wchar is how many bytes a process has passed to write calls.
func wchar(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// TestLayoutConvertOnline: an image converted from linear to raid1 while
// fio writes and verifies it; the new copy syncs in the background (shown
// by volfs ls) while other files are created and read; the copies match
// when in sync; then to three copies, and back to linear.
func TestLayoutConvertOnline(t *testing.T) {
	e := newVGOn(t, 3)
	m := e.mount()
	src := e.file("src", 16*mib, 11)
	sh(t, "cp", src, m.path("conv"))
	if p := e.placement("conv"); p.segtype != "linear" {
		t.Fatalf("conv: %+v", p)
	}
	// The new image's sync (16 MiB) takes a minute or more at 256 KiB/s:
	// what follows happens while it runs.
	restore := slowRAIDSync(t, 256)

	// fio writes at 1 MiB/s (16 s or more), then verifies every block.
	fio := exec.Command("fio", fioArgs(m.path("conv"), "16m", "--rate=1m")...)
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	fioDone := make(chan error, 1)
	go func() { fioDone <- fio.Wait() }()
	t.Cleanup(func() {
		_ = fio.Process.Kill()
		<-fioDone
		fioDone <- nil
	})
	waitFor(t, "fio has written 1 MiB", time.Minute, func() bool { return wchar(fio.Process.Pid) >= mib })

	if out, err := try(volfsBin, "layout", "--wait=false", m.path("conv"), "raid1", "mirrors=1"); err != nil {
		t.Fatalf("volfs layout conv raid1 mirrors=1: %v\n%s\n%s", err, out, m.logText())
	}
	select {
	case err := <-fioDone:
		fioDone <- err
		t.Logf("fio ended before the conversion returned (%v): the conversion ran under less I/O than meant", err)
	default:
	}
	if p := e.placement("conv"); p.segtype != "raid1" || p.stripes != 2 || len(p.pvs) != 2 {
		t.Errorf("conv after conversion to raid1: %+v", p)
	}
	f := lsLayouts(t, m)["conv"]
	if f.Layout != "raid1 mirrors=1" || f.Health != "ok" || f.SyncPercent == nil || *f.SyncPercent >= 100 {
		t.Errorf("volfs ls --json conv while its new copy syncs: %+v", f)
	}
	if out := sh(t, volfsBin, "ls", m.dir); !strings.Contains(out, "syncing") {
		t.Errorf("volfs ls does not show the sync:\n%s", out)
	}
	if out := sh(t, volfsBin, "layout", m.path("conv")); !strings.Contains(out, "in sync: ") {
		t.Errorf("volfs layout conv while syncing:\n%s", out)
	}

	// Other files are created, written, read and removed while the
	// conversion syncs: the driver is not held by it.
	other := e.file("other", 4*mib, 12)
	sh(t, "cp", other, m.path("other"))
	if st, err := os.Stat(m.path("other")); err != nil || st.Size() != 4*mib {
		t.Fatalf("stat other during the sync: %v, %v", st, err)
	}
	sameData(t, other, m.path("other"))
	if err := os.Remove(m.path("other")); err != nil {
		t.Fatal(err)
	}
	if e.inSync("conv") {
		t.Errorf("conv's sync ended before the other file's create, read and remove: they did not run during it")
	}

	if err := <-fioDone; err != nil {
		fioDone <- err
		t.Fatalf("fio --verify on conv through the conversion: %v\n%s", err, fioOut.String())
	}
	fioDone <- nil
	t.Logf("fio: %s", lastLines(fioOut.String(), 3))
	restore()
	e.waitInSync("conv")
	if f := lsLayouts(t, m)["conv"]; f.Health != "ok" || f.Degraded {
		t.Errorf("volfs ls --json conv in sync: %+v", f)
	}
	// The copies hold the same bytes (the kernel compares them).
	sh(t, "lvchange", "-q", "--syncaction", "check", e.vg+"/conv")
	e.waitInSync("conv")
	if out := strings.TrimSpace(sh(t, "lvs", "--noheadings", "-o", "raid_mismatch_count", e.vg+"/conv")); out != "0" {
		t.Errorf("conv's copies differ after the sync: raid_mismatch_count %s", out)
	}
	verify := fioArgs(m.path("conv"), "16m", "--verify_only")
	sh(t, "fio", verify...)

	// A third copy, then back to linear: the data stays.
	if out, err := try(volfsBin, "layout", m.path("conv"), "raid1", "mirrors=2"); err != nil {
		t.Fatalf("volfs layout conv raid1 mirrors=2: %v\n%s\n%s", err, out, m.logText())
	}
	if p := e.placement("conv"); p.segtype != "raid1" || p.stripes != 3 || len(p.pvs) != 3 {
		t.Errorf("conv after conversion to raid1 mirrors=2: %+v", p)
	}
	e.waitInSync("conv")
	if out, err := try(volfsBin, "layout", m.path("conv"), "linear"); err != nil {
		t.Fatalf("volfs layout conv linear: %v\n%s\n%s", err, out, m.logText())
	}
	if p := e.placement("conv"); p.segtype != "linear" || len(p.pvs) != 1 {
		t.Errorf("conv after conversion to linear: %+v", p)
	}
	sh(t, "fio", verify...)
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(len(l)-n, 0):], "\n")
}

// createWithLayout creates a file, gives it layout before its first write
// (trusted.volfs.layout on the file not yet materialized), and writes src
// into it.
func createWithLayout(t *testing.T, path, layout, src string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := setLayout(path, layout); err != nil {
		t.Fatalf("set %s %q on new %s: %v", layoutXattr, layout, path, err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestLayoutConvert: the conversions LVM makes in one step beyond linear
// <-> raid1 (striped -> raid5 -> striped); and requests refused before
// anything changes, naming the reason: raid1 when no other PV has room
// for the copy (PVs with some free space, not enough), linear -> striped
// (LVM's indirect conversion), raid5 -> striped from a raid5 whose parity
// rotates.
func TestLayoutConvert(t *testing.T) {
	e := newVGOn(t, 3)
	m := e.mount()
	src := e.file("src", 8*mib, 21)

	// striped -> raid5 (LVM's raid5_n: parity on a third PV) -> striped.
	createWithLayout(t, m.path("s"), "striped stripes=2", src)
	if p := e.placement("s"); p.segtype != "striped" || p.stripes != 2 || len(p.pvs) != 2 {
		t.Fatalf("s: %+v", p)
	}
	if err := setLayout(m.path("s"), "raid5 stripes=2"); err != nil {
		t.Fatalf("convert s to raid5: %v\n%s", err, m.logText())
	}
	if p := e.placement("s"); p.segtype != "raid5_n" || p.stripes != 3 || len(p.pvs) != 3 {
		t.Errorf("s after conversion to raid5: %+v", p)
	}
	if v := getLayout(t, m.path("s")); v != "raid5 stripes=2" {
		t.Errorf("%s of s = %q", layoutXattr, v)
	}
	sameData(t, src, m.path("s"))
	e.waitInSync("s")
	if err := setLayout(m.path("s"), "striped stripes=2"); err != nil {
		t.Fatalf("convert s back to striped: %v\n%s", err, m.logText())
	}
	if p := e.placement("s"); p.segtype != "striped" || p.stripes != 2 || len(p.pvs) != 2 {
		t.Errorf("s after conversion back to striped: %+v", p)
	}
	sameData(t, src, m.path("s"))

	refused := func(name, layout string, words ...string) {
		t.Helper()
		before := e.lvsText()
		if err := setLayout(m.path(name), layout); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("convert %s to %q: %v, want EINVAL", name, layout, err)
		}
		if !m.logHas(append([]string{"volume=" + name}, words...)...) {
			t.Errorf("the log does not say why %s to %q was refused (%q):\n%s", name, layout, words, m.logText())
		}
		if after := e.lvsText(); after != before {
			t.Errorf("the refused conversion of %s to %q changed the LVs:\nbefore:\n%s\nafter:\n%s", name, layout, before, after)
		}
	}
	refused("s", "linear", "LVM converts between linear and striped only in four steps")

	// A raid5 made as such rotates its parity: LVM takes it to striped
	// only after a reshape.
	createWithLayout(t, m.path("r5"), "raid5 stripes=2", src)
	e.waitTrimmed("r5", 8*mib)
	refused("r5", "striped stripes=2", "LVM takes only raid5_n and raid6_n_6")
	refused("r5", "raid5 stripes=3", "is a reshape")
	sameData(t, src, m.path("r5"))
	for _, n := range []string{"s", "r5"} {
		if err := os.Remove(m.path(n)); err != nil {
			t.Fatal(err)
		}
	}

	// raid1 needs a PV with room for the whole copy: fill one other PV,
	// leave the third 8 MiB (less than the 8 MiB image and its 4 MiB
	// metadata LV).
	sh(t, "cp", src, m.path("a"))
	e.waitTrimmed("a", 8*mib)
	p := e.placement("a")
	if p.segtype != "linear" || len(p.pvs) != 1 {
		t.Fatalf("a: %+v", p)
	}
	var others []string
	for _, d := range e.disks {
		if !sameDev(d, p.pvs[0]) {
			others = append(others, d)
		}
	}
	sh(t, "lvcreate", "-q", "-l", "100%FREE", "-n", "fill1", e.vg, others[0])
	free := strings.TrimSpace(sh(t, "pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pv_free", others[1]))
	n, err := strconv.ParseInt(free, 10, 64)
	if err != nil {
		t.Fatalf("pv_free of %s: %q", others[1], free)
	}
	sh(t, "lvcreate", "-q", "-L", strconv.FormatInt(n-8*mib, 10)+"b", "-n", "fill2", e.vg, others[1])
	refused("a", "raid1 mirrors=1", "needs 1 more PV(s) with 12 MiB free each", others[1]+" (8 MiB free)")
	if out, err := try(volfsBin, "layout", m.path("a"), "raid1", "mirrors=1"); err == nil || !strings.Contains(out, "refused") {
		t.Errorf("volfs layout a raid1 mirrors=1 with no room: %v\n%s", err, out)
	}
	refused("a", "striped stripes=2", "LVM converts between linear and striped only in four steps")
	sameData(t, src, m.path("a"))
	// With room again (fill2 gone), the same request is done.
	if err := os.Remove(m.path("fill2")); err != nil {
		t.Fatal(err)
	}
	if err := setLayout(m.path("a"), "raid1 mirrors=1"); err != nil {
		t.Fatalf("convert a to raid1 once a PV has room: %v\n%s", err, m.logText())
	}
	if p := e.placement("a"); p.segtype != "raid1" || !hasDev(p.pvs, others[1]) {
		t.Errorf("a after conversion: %+v", p)
	}
	sameData(t, src, m.path("a"))
}

// checkFile checks a file's layout xattr, size and bytes (want, zeros
// past its end).
func checkFile(t *testing.T, m *mount, name, layout, want string, n int64) {
	t.Helper()
	if v := getLayout(t, m.path(name)); v != layout {
		t.Errorf("%s of %s = %q, want %q", layoutXattr, name, v, layout)
	}
	if got := size(t, m.path(name)); got != n {
		t.Errorf("size of %s (%s) = %d, want %d", name, layout, got, n)
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) < n {
		b = append(b, make([]byte, n-int64(len(b)))...)
	}
	if !bytes.Equal(fileBytes(t, m.path(name), 0, n), b[:n]) {
		t.Errorf("%s (%s): the bytes differ from %s (zeros past its end)", name, layout, want)
	}
}

// fileOps checks file name, holding src, on its LV (segtype over npvs
// PVs), then grows it by more, truncates it down and up, renames it,
// has a snapshot refused, and removes it.
func fileOps(t *testing.T, e *env, m *mount, name, layout, segtype string, npvs int, src, more string) {
	t.Helper()
	check := func(name, want string, n int64) { t.Helper(); checkFile(t, m, name, layout, want, n) }
	grown := concat(t, e, name+"-grown", src, more)
	n0, n1 := size(t, src), size(t, grown)
	if p := e.placement(name); !strings.HasPrefix(p.segtype, segtype) || len(p.pvs) != npvs {
		t.Errorf("%s: %+v, want %s over %d PVs", name, p, segtype, npvs)
	}
	check(name, src, n0)
	appendFile(t, more, m.path(name))
	check(name, grown, n1)
	if err := os.Truncate(m.path(name), 5*mib+7); err != nil {
		t.Fatalf("truncate %s down: %v", name, err)
	}
	check(name, grown, 5*mib+7)
	if err := os.Truncate(m.path(name), n1+2*mib); err != nil {
		t.Fatalf("truncate %s up: %v", name, err)
	}
	cut := e.base + "/" + name + "-cut"
	if err := os.WriteFile(cut, fileBytes(t, grown, 0, 5*mib+7), 0o644); err != nil {
		t.Fatal(err)
	}
	check(name, cut, n1+2*mib)
	if l := e.lv(name); l.Size < n1+2*mib {
		t.Errorf("%s: LV of %d bytes under a file of %d", name, l.Size, n1+2*mib)
	}
	mv := name + "-mv"
	if err := os.Rename(m.path(name), m.path(mv)); err != nil {
		t.Fatalf("rename %s: %v", name, err)
	}
	if p := e.placement(mv); !strings.HasPrefix(p.segtype, segtype) || len(p.pvs) != npvs {
		t.Errorf("%s after rename: %+v", mv, p)
	}
	check(mv, cut, n1+2*mib)
	if out, err := try(volfsBin, "snapshot", "create", m.path(mv), "s"); err == nil ||
		!strings.Contains(out, "not a thin volume") {
		t.Errorf("volfs snapshot create of %s (%s): %v, want a refusal naming thin volumes:\n%s", mv, layout, err, out)
	}
	if err := os.Remove(m.path(mv)); err != nil {
		t.Fatalf("rm %s: %v", mv, err)
	}
	lvs, _ := e.lvs()
	for n := range lvs {
		if strings.HasPrefix(strings.Trim(n, "[]"), name) {
			t.Errorf("rm %s left LV %s", mv, n)
		}
	}
}

// TestLayoutFileOps: growth on write, truncate down and up, rename, remove
// and snapshots on every layout the 3 PVs allow besides linear (raid10
// needs 4, raid6 5), and on a thin file whose pool's data is raid1.
func TestLayoutFileOps(t *testing.T) {
	e := newVGOn(t, 3)
	m := e.mount()
	src := e.file("src", 3*mib+123, 31)
	more := e.file("more", 9*mib, 32)
	grown := concat(t, e, "grown", src, more)
	check := func(name, layout, want string, n int64) { t.Helper(); checkFile(t, m, name, layout, want, n) }
	for _, c := range []struct {
		layout  string
		segtype string
		pvs     int
	}{
		// linear: TestLinearFiles and most others.
		{"striped stripes=2", "striped", 2},
		{"raid1 mirrors=1", "raid1", 2},
		{"raid5 stripes=2", "raid5", 3},
	} {
		name := strings.Fields(c.layout)[0]
		createWithLayout(t, m.path(name), c.layout, src)
		fileOps(t, e, m, name, c.layout, c.segtype, c.pvs, src, more)
	}
	m.umount()

	// Thin files on a pool whose data is raid1: the file's layout is the
	// pool's; snapshots work.
	sh(t, "lvcreate", "-q", "--type", "raid1", "-m", "1", "-L", "64m", "-n", "pool", e.vg)
	sh(t, "lvconvert", "-q", "--yes", "--type", "thin-pool", e.vg+"/pool")
	sh(t, "lvchange", "-q", "--errorwhenfull", "y", e.vg+"/pool")
	if p := e.placement("[pool_tdata]"); p.segtype != "raid1" || len(p.pvs) != 2 {
		t.Fatalf("pool's data: %+v", p)
	}
	m = e.mount("--thin-pool", "pool")
	sh(t, "cp", src, m.path("t"))
	check("t", "thin", src, 3*mib+123)
	appendFile(t, more, m.path("t"))
	check("t", "thin", grown, 12*mib+123)
	sh(t, volfsBin, "snapshot", "create", m.path("t"), "s")
	if err := os.Truncate(m.path("t"), 5*mib+7); err != nil {
		t.Fatal(err)
	}
	sameData(t, grown, m.path(".snapshots/t/s"))
	if err := os.Rename(m.path("t"), m.path("t2")); err != nil {
		t.Fatal(err)
	}
	check("t2", "thin", grown, 5*mib+7)
	sh(t, volfsBin, "snapshot", "delete", m.path("t2"), "s")
	if err := os.Remove(m.path("t2")); err != nil {
		t.Fatal(err)
	}
	if files := e.files(); len(files) != 0 {
		t.Errorf("LVs left: %v", files)
	}
}

// sameDev reports whether two device paths name one block device (lvs
// may name a PV /dev/dm-N or /dev/mapper/NAME).
func sameDev(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Stat(a, &sa) == nil && unix.Stat(b, &sb) == nil && sa.Rdev == sb.Rdev
}

func hasDev(devs []string, dev string) bool {
	return slices.ContainsFunc(devs, func(d string) bool { return sameDev(d, dev) })
}

// TestLayoutDegraded: a raid1 image one of whose PVs fails (its
// device-mapper table switched to the error target) keeps serving reads and
// writes; the log, volfs ls, volfs status and the metrics say it is
// degraded; lvconvert --repair rebuilds the lost copy on a spare PV, and
// the data is intact.
func TestLayoutDegraded(t *testing.T) {
	e, pvs := newFaultVG(t, 3, 256*mib)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	m := e.mount("--layout", "raid1", "--mirrors", "1", "--metrics", addr)
	src := e.file("src", 8*mib, 7)
	sh(t, "cp", src, m.path("r"))
	p := e.placement("r")
	if p.segtype != "raid1" || len(p.pvs) != 2 {
		t.Fatalf("r: %+v", p)
	}
	var failed, spare *dmDev
	for _, d := range pvs {
		switch {
		case sameDev(d.path(), p.pvs[1]):
			failed = d
		case !hasDev(p.pvs, d.path()):
			spare = d
		}
	}
	if failed == nil || spare == nil {
		t.Fatalf("r is on %v: no PV of it among %s, %s, %s, or no spare", p.pvs, pvs[0].path(), pvs[1].path(), pvs[2].path())
	}
	e.waitInSync("r")
	if f := lsLayouts(t, m)["r"]; f.Health != "ok" || f.Degraded {
		t.Fatalf("volfs ls --json r before the failure: %+v", f)
	}
	if v := scrapeMetrics(t, addr)["volfs_degraded_images"]; v != 0 {
		t.Errorf("volfs_degraded_images before the failure: %v", v)
	}

	failed.load(failed.failing())
	faulted := true
	t.Cleanup(func() {
		if faulted {
			failed.load(failed.linear())
		}
	})
	// Reads and writes go on (an overwrite: growing a degraded LV is
	// LVM's to refuse).
	sameData(t, src, m.path("r"))
	more := e.file("more", 4*mib, 8)
	fill(t, more, m.path("r"))
	rest := e.base + "/src-rest"
	if err := os.WriteFile(rest, fileBytes(t, src, 4*mib, 4*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	want := concat(t, e, "r-want", more, rest)
	sameData(t, want, m.path("r"))

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
	mt := scrapeMetrics(t, addr)
	if mt["volfs_degraded_images"] != 1 || mt[`volfs_image_degraded{health="`+f.Health+`",image="r",layout="raid1 mirrors=1"}`] != 1 {
		t.Errorf("metrics of a degraded image: volfs_degraded_images %v, volfs_image_degraded %v",
			mt["volfs_degraded_images"], mt[`volfs_image_degraded{health="`+f.Health+`",image="r",layout="raid1 mirrors=1"}`])
	}
	if !m.logHas("RAID volume is degraded", "volume=r", "lvconvert --repair") {
		t.Errorf("the log does not say r is degraded:\n%s", m.logText())
	}
	// Growing it is not: LVM changes no VG with a PV missing.
	if out, err := try("dd", "if="+more, "of="+m.path("r"), "bs=1M", "oflag=append", "conv=notrunc,fsync",
		"status=none"); err == nil || !strings.Contains(out, "Input/output error") {
		t.Errorf("growing r while degraded: %v, want EIO: %s", err, out)
	}
	if !m.logHas("resize failed", "volume=r", "while PVs are missing") {
		t.Errorf("the log does not say why r could not grow:\n%s", m.logText())
	}
	sameData(t, want, m.path("r"))
	t.Logf("lvs: %s", sh(t, "lvs", "-a", "-o", "lv_name,segtype,lv_attr,lv_health_status,sync_percent,devices", e.vg))

	// The repair README shows: the lost copy is rebuilt on the spare PV,
	// while the file stays in use.
	sh(t, "lvconvert", "-q", "--yes", "--repair", e.vg+"/r")
	if p := e.placement("r"); p.segtype != "raid1" || hasDev(p.pvs, failed.path()) || !hasDev(p.pvs, spare.path()) {
		t.Errorf("r after lvconvert --repair: %+v (failed %s, spare %s)", p, failed.path(), spare.path())
	}
	e.waitInSync("r")
	waitFor(t, "volfs ls says r is ok", time.Minute, func() bool {
		f = lsLayouts(t, m)["r"]
		return !f.Degraded
	})
	if f.Health != "ok" {
		t.Errorf("volfs ls --json r after the repair: %+v", f)
	}
	runJSON(t, &st, "status", "--json", m.dir)
	if len(st.Warnings) != 0 {
		t.Errorf("volfs status --json warnings after the repair: %q", st.Warnings)
	}
	if v := scrapeMetrics(t, addr)["volfs_degraded_images"]; v != 0 {
		t.Errorf("volfs_degraded_images after the repair: %v", v)
	}
	if !m.logHas("no longer degraded", "volume=r") {
		t.Errorf("the log does not say r is whole again:\n%s", m.logText())
	}
	sameData(t, want, m.path("r"))
	// The failed disk leaves the VG; back on line, it is wiped.
	sh(t, "vgreduce", "-q", "--removemissing", e.vg)
	failed.load(failed.linear())
	faulted = false
	sh(t, "wipefs", "-q", "-a", failed.path())
	sameData(t, want, m.path("r"))
}

// onDistinctPVs checks that each of the n images of RAID LV name lies on
// one PV of its own.
func onDistinctPVs(t *testing.T, e *env, name string, n int) {
	t.Helper()
	var seen []string
	for i := range n {
		img := fmt.Sprintf("[%s_rimage_%d]", name, i)
		p := e.placement(img)
		if len(p.pvs) != 1 || hasDev(seen, p.pvs[0]) {
			t.Errorf("%s is on %v; the images before it on %v", img, p.pvs, seen)
			continue
		}
		seen = append(seen, p.pvs[0])
	}
}

// TestLayoutManyPVs: raid6 (5 PVs) and raid10 (4 PVs), which the 3 scratch
// disks of the other layout tests cannot hold, on a VG of 5 PVs that are
// slices of one scratch disk: made by the mount's --layout and by
// trusted.volfs.layout on a new file, their images on distinct PVs, the
// data intact after a remount, and growth, truncate, rename and rm.
func TestLayoutManyPVs(t *testing.T) {
	e, _ := newFaultVG(t, 5, 128*mib)
	src := e.file("src", 3*mib+123, 41)
	more := e.file("more", 5*mib, 42)
	m := e.mount("--layout", "raid6")
	sh(t, "cp", src, m.path("r6"))
	createWithLayout(t, m.path("r10"), "raid10 stripes=2 mirrors=1", src)
	for _, c := range []struct {
		name, segtype, layout string
		images                int
	}{
		{"r6", "raid6", "raid6 stripes=3", 5},
		{"r10", "raid10", "raid10 stripes=2 mirrors=1", 4},
	} {
		if p := e.placement(c.name); !strings.HasPrefix(p.segtype, c.segtype) || p.stripes != c.images {
			t.Errorf("%s: %+v, want %s with %d images", c.name, p, c.segtype, c.images)
		}
		onDistinctPVs(t, e, c.name, c.images)
		if v := getLayout(t, m.path(c.name)); v != c.layout {
			t.Errorf("%s of %s = %q, want %q", layoutXattr, c.name, v, c.layout)
		}
	}
	m.remount()
	sameData(t, src, m.path("r6"))
	sameData(t, src, m.path("r10"))
	fileOps(t, e, m, "r6", "raid6 stripes=3", "raid6", 5, src, more)
	fileOps(t, e, m, "r10", "raid10 stripes=2 mirrors=1", "raid10", 4, src, more)
	m.umount()

	m = e.mount("--layout", "raid10")
	sh(t, "cp", src, m.path("m10"))
	if p := e.placement("m10"); p.segtype != "raid10" || p.stripes != 4 {
		t.Errorf("m10 under --layout raid10: %+v, want raid10 with 4 images", p)
	}
	onDistinctPVs(t, e, "m10", 4)
	if v := getLayout(t, m.path("m10")); v != "raid10 stripes=2 mirrors=1" {
		t.Errorf("%s of m10 = %q", layoutXattr, v)
	}
	m.remount()
	sameData(t, src, m.path("m10"))
}
