package lvm_test

// Tests against real LVM. They need device-mapper, so they run in the test
// guest (integration/vm): go test -exec "$PWD/integration/vm/vmrun.sh -D 4G --" ./volmap/lvm/
// and skip elsewhere. Each test builds its own VG on the scratch disk and
// removes it when it ends.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/volfs/volfs/integration/vm"
	"github.com/volfs/volfs/internal/testutil"
	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
	"github.com/volfs/volfs/volmap/lvm"
	"github.com/volfs/volfs/volmap/volmaptest"
)

const mib = 1 << 20

var vgSeq atomic.Int32

// env is one test VG on the scratch disk.
type env struct {
	t   *testing.T
	vg  string
	dev string
	cmd *countingHandler
}

// newEnv creates a VG on the scratch disk (removed by t.Cleanup).
func newEnv(t *testing.T) *env {
	t.Helper()
	disks := vm.RequireScratchDisks(t, 1)
	e := &env{t: t, vg: fmt.Sprintf("vt%d", vgSeq.Add(1)), dev: disks[0], cmd: &countingHandler{}}
	e.sh("pvcreate", "-q", "-ff", "--yes", e.dev)
	e.sh("vgcreate", "-q", e.vg, e.dev)
	t.Cleanup(func() {
		// A VG left behind (or its devices still active) would sit under
		// the next test's VG on the same disk: fail the test that left it,
		// and clear it away so that the next one starts clean.
		if out, err := e.try("vgremove", "-q", "-ff", "--yes", e.vg); err != nil {
			t.Errorf("cleanup: vgremove %s: %v\n%s", e.vg, err, out)
		}
		if out, _ := e.try("dmsetup", "ls"); strings.Contains(out, e.vg+"-") {
			t.Errorf("cleanup: device-mapper devices of %s left after vgremove:\n%s", e.vg, out)
			for _, line := range strings.Split(out, "\n") {
				if name, _, _ := strings.Cut(line, "\t"); strings.HasPrefix(name, e.vg+"-") {
					e.try("dmsetup", "remove", "--force", name)
				}
			}
		}
		if out, err := e.try("pvremove", "-q", "-ff", "--yes", e.dev); err != nil {
			t.Errorf("cleanup: pvremove %s: %v\n%s", e.dev, err, out)
		}
	})
	return e
}

// sh runs a plain lvm2 (or other) command, failing the test if it fails.
func (e *env) sh(name string, args ...string) string {
	e.t.Helper()
	out, err := e.try(name, args...)
	if err != nil {
		e.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (e *env) try(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// lvsRow is what plain lvs says about an LV.
type lvsRow struct {
	name, uuid string
	size       int64
	tags       []string
	segtype    string
}

// lvs lists the VG's LVs with plain lvs (not the driver's parser).
func (e *env) lvs() map[string]lvsRow {
	e.t.Helper()
	out := e.sh("lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", "|",
		"-o", "lv_name,lv_uuid,lv_size,lv_tags,segtype", e.vg)
	rows := map[string]lvsRow{}
	for l := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		f := strings.Split(strings.TrimSpace(l), "|")
		if len(f) != 5 {
			continue
		}
		size, _ := strconv.ParseInt(f[2], 10, 64)
		var tags []string
		if f[3] != "" {
			tags = strings.Split(f[3], ",")
		}
		rows[f[0]] = lvsRow{name: f[0], uuid: f[1], size: size, tags: tags, segtype: f[4]}
	}
	return rows
}

// driver makes a driver for the VG; every lvm command it runs is counted.
func (e *env) driver(cfg lvm.Config) *lvm.Driver {
	e.t.Helper()
	cfg.VG = e.vg
	cfg.Log = slog.New(e.cmd)
	start := time.Now()
	d, err := lvm.New(context.Background(), cfg)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	e.t.Logf("New: %v", time.Since(start).Round(time.Millisecond))
	return d
}

// countingHandler counts the lvm commands a driver runs: n all of them,
// changes those that are not reports (lvs, vgs).
type countingHandler struct{ n, changes atomic.Int64 }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "lvm" {
		return nil
	}
	h.n.Add(1)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "cmd" && !strings.HasPrefix(a.Value.String(), "lvs ") && !strings.HasPrefix(a.Value.String(), "vgs ") {
			h.changes.Add(1)
		}
		return true
	})
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// timed runs f and logs how long it took.
func timed[T any](t *testing.T, what string, f func() (T, error)) (T, error) {
	t.Helper()
	start := time.Now()
	v, err := f()
	t.Logf("%s: %v", what, time.Since(start).Round(time.Millisecond))
	return v, err
}

func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & 4095)
	return b[off : off+n]
}

func pattern(n int) []byte {
	b := alignedBuf(n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

func writeAt(t *testing.T, d volmap.Driver, name string, data []byte, off int64) {
	t.Helper()
	f, err := d.Open(context.Background(), name, os.O_RDWR|syscall.O_DIRECT)
	if err != nil {
		t.Fatalf("Open(%q): %v", name, err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("write %q: %v", name, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, d volmap.Driver, name string, n int, off int64) []byte {
	t.Helper()
	f, err := d.Open(context.Background(), name, os.O_RDONLY|syscall.O_DIRECT)
	if err != nil {
		t.Fatalf("Open(%q): %v", name, err)
	}
	defer f.Close()
	b := alignedBuf(n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %q: %v", name, err)
	}
	return b
}

// readDev reads the LV's device directly, not through the driver.
func (e *env) readDev(lv string, n int) []byte {
	e.t.Helper()
	f, err := os.OpenFile(filepath.Join("/dev", e.vg, lv), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	b := alignedBuf(n)
	if _, err := f.ReadAt(b, 0); err != nil {
		e.t.Fatal(err)
	}
	return b
}

// holdOpen starts a process that keeps the LV's device open until the test
// ends, and returns its pid once it holds it.
func (e *env) holdOpen(lv string) int {
	e.t.Helper()
	dev := filepath.Join("/dev/mapper", volmap.DMName(e.vg, lv))
	cmd := exec.Command("sh", "-c", `exec 3<"$1"; exec sleep 600`, "sh", dev)
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", cmd.Process.Pid)); err == nil &&
			strings.TrimSpace(string(comm)) == "sleep" && target != "" {
			return cmd.Process.Pid
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("holder of %s did not start", dev)
	return 0
}

func hasTag(tags []string, prefix string) []string {
	var out []string
	for _, t := range tags {
		if strings.HasPrefix(t, prefix) {
			out = append(out, t)
		}
	}
	return out
}

func TestLinearLifecycle(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	attrs := meta.Attrs{Mode: 0o640, UID: 107, GID: 108, Mtime: time.Unix(1700000000, 5), Size: 10*mib + 1}

	v, err := timed(t, "Create linear", func() (volmap.Volume, error) { return d.Create(ctx, "web disk", 10*mib+1, attrs) })
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "web disk" || v.Size != 12*mib || v.Used != -1 || v.Thin || !v.Attrs.Equal(attrs) {
		t.Fatalf("Create = %+v", v)
	}
	row, ok := e.lvs()["web+20disk"]
	if !ok || row.size != 12*mib || row.uuid != v.ID || row.segtype != "linear" {
		t.Fatalf("lvs: %+v (found %v)", row, ok)
	}
	if !slices.Contains(row.tags, lvm.DefaultTag) || !slices.Contains(row.tags, "volfs.mode=0640") {
		t.Fatalf("lvs tags %v", row.tags)
	}

	// List and Lookup (the listing was invalidated by Create).
	vols, err := timed(t, "List", func() ([]volmap.Volume, error) { return d.List(ctx) })
	if err != nil || len(vols) != 1 || vols[0].ID != v.ID {
		t.Fatalf("List = %+v, %v", vols, err)
	}
	n := e.cmd.n.Load()
	if got, err := d.Lookup(ctx, "web disk"); err != nil || got.ID != v.ID {
		t.Fatalf("Lookup = %+v, %v", got, err)
	}
	if e.cmd.n.Load() != n {
		t.Errorf("Lookup right after List ran lvm again")
	}
	if _, err := d.Lookup(ctx, "web+20disk"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("Lookup of the encoded name: %v", err)
	}

	// Data through the device.
	data := pattern(mib)
	writeAt(t, d, "web disk", data, 0)
	if !bytes.Equal(readAt(t, d, "web disk", mib, 0), data) || !bytes.Equal(e.readDev("web+20disk", mib), data) {
		t.Fatal("read back differs")
	}

	// Attributes: one lvchange with only the changed tags; none when
	// nothing changes.
	attrs.Mode = 0o600
	attrs.Xattrs = map[string][]byte{"user.k": {0, 1, 2}}
	if _, err := timed(t, "SetAttrs", func() (int, error) { return 0, d.SetAttrs(ctx, "web disk", attrs) }); err != nil {
		t.Fatal(err)
	}
	row = e.lvs()["web+20disk"]
	if m := hasTag(row.tags, "volfs.mode="); !slices.Equal(m, []string{"volfs.mode=0600"}) {
		t.Fatalf("mode tags after SetAttrs: %v", row.tags)
	}
	n = e.cmd.changes.Load()
	if err := d.SetAttrs(ctx, "web disk", attrs); err != nil {
		t.Fatal(err)
	}
	if e.cmd.changes.Load() != n {
		t.Errorf("SetAttrs without a change ran lvchange")
	}
	if got, err := d.Lookup(ctx, "web disk"); err != nil || !got.Attrs.Equal(attrs) {
		t.Fatalf("Lookup after SetAttrs = %+v, %v", got.Attrs, err)
	}

	// Resize: grow (rounded up), shrink, same size.
	got, err := timed(t, "Resize grow", func() (int64, error) { return d.Resize(ctx, "web disk", 30*mib+5) })
	if err != nil || got != 32*mib {
		t.Fatalf("Resize = %d, %v", got, err)
	}
	if row := e.lvs()["web+20disk"]; row.size != 32*mib {
		t.Fatalf("lvs size after grow %d", row.size)
	}
	if got, err := d.Resize(ctx, "web disk", 4*mib); err != nil || got != 4*mib {
		t.Fatalf("Resize shrink = %d, %v", got, err)
	}
	if row := e.lvs()["web+20disk"]; row.size != 4*mib {
		t.Fatalf("lvs size after shrink %d", row.size)
	}
	if !bytes.Equal(readAt(t, d, "web disk", mib, 0), data) {
		t.Fatal("data lost by resizing")
	}
	if f, err := d.Open(ctx, "web disk", os.O_RDONLY); err != nil {
		t.Fatal(err)
	} else {
		size, _ := volmap.DeviceSize(f)
		f.Close()
		if size != 4*mib {
			t.Fatalf("device size %d after shrink", size)
		}
	}

	// Rename.
	if _, err := timed(t, "Rename", func() (int, error) { return 0, d.Rename(ctx, "web disk", "web.img") }); err != nil {
		t.Fatal(err)
	}
	rows := e.lvs()
	if _, old := rows["web+20disk"]; old || rows["web.img"].uuid != v.ID {
		t.Fatalf("lvs after rename: %v", rows)
	}
	if _, err := d.Lookup(ctx, "web disk"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("old name: %v", err)
	}
	if _, err := d.Create(ctx, "other", mib, attrs); err != nil {
		t.Fatal(err)
	}
	if err := d.Rename(ctx, "other", "web.img"); !errors.Is(err, volmap.ErrExists) {
		t.Fatalf("Rename over an existing file: %v", err)
	}
	if err := d.Rename(ctx, "missing", "x"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("Rename of a missing file: %v", err)
	}

	// Remove.
	if _, err := timed(t, "Remove", func() (int, error) { return 0, d.Remove(ctx, "web.img") }); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.lvs()["web.img"]; ok {
		t.Fatal("lvs still shows the removed LV")
	}
	if err := d.Remove(ctx, "web.img"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestThin(t *testing.T) {
	e := newEnv(t)
	e.sh("lvcreate", "-q", "--type", "thin-pool", "-L", "256m", "-n", "pool", e.vg)
	d := e.driver(lvm.Config{ThinPool: "pool"})
	ctx := context.Background()
	v, err := timed(t, "Create thin", func() (volmap.Volume, error) { return d.Create(ctx, "t1", 100*mib, meta.Attrs{Mode: 0o644, Size: -1}) })
	if err != nil {
		t.Fatal(err)
	}
	if !v.Thin || v.Size != 100*mib || v.Used != 0 {
		t.Fatalf("Create thin = %+v", v)
	}
	if row := e.lvs()["t1"]; row.segtype != "thin" || row.size != 100*mib {
		t.Fatalf("lvs: %+v", row)
	}
	// Unwritten blocks read as zeros; allocation shows in Used.
	if b := readAt(t, d, "t1", mib, 50*mib); !bytes.Equal(b, make([]byte, mib)) {
		t.Fatal("unwritten thin blocks are not zero")
	}
	data := pattern(4 * mib)
	writeAt(t, d, "t1", data, 0)
	time.Sleep(1100 * time.Millisecond) // let the cached listing expire
	v, err = d.Lookup(ctx, "t1")
	if err != nil || v.Used < 4*mib || v.Used > 5*mib {
		t.Fatalf("Used after writing 4 MiB: %+v, %v", v, err)
	}
	// Nothing written since: the pool's status is the same, and the
	// expired listing is renewed (a write would have changed the status:
	// the Lookup above came after one).
	d.WaitListing()
	time.Sleep(1100 * time.Millisecond)
	r := d.Renewals()
	if v, err := d.Lookup(ctx, "t1"); err != nil || v.Used < 4*mib {
		t.Fatalf("Lookup = %+v, %v", v, err)
	}
	if d.Renewals() != r+1 {
		t.Error("the expired listing of an unchanged VG with a thin pool was not renewed")
	}
	sp, err := d.Space(ctx)
	// data_percent has two decimals: Free is exact to 0.01% of the pool.
	if err != nil || sp.Total != 256*mib || sp.Free > 252*mib+256*mib/10000 || sp.Free < 250*mib {
		t.Fatalf("Space = %+v, %v", sp, err)
	}

	// A thin snapshot made by lvcreate carries activation-skip: Open must
	// activate it anyway.
	e.sh("lvcreate", "-q", "-s", "-n", "t1-snap", e.vg+"/t1")
	e.sh("lvchange", "-an", e.vg+"/t1-snap")
	time.Sleep(1100 * time.Millisecond) // another tool's change shows once the listing expires
	if b := readAt(t, d, "t1-snap", 4*mib, 0); !bytes.Equal(b, data) {
		t.Fatal("snapshot content differs")
	}
	// The pool is not a file, and cannot be opened, renamed or removed.
	for _, name := range []string{"pool", "pool_tdata", "[pool_tdata]"} {
		if _, err := d.Open(ctx, name, os.O_RDONLY); err == nil {
			t.Fatalf("Open(%q) succeeded", name)
		}
		if err := d.Remove(ctx, name); err == nil {
			t.Fatalf("Remove(%q) succeeded", name)
		}
	}
	if err := d.Rename(ctx, "pool", "p2"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("Rename(pool): %v", err)
	}
	vols, _ := d.List(ctx)
	var names []string
	for _, v := range vols {
		names = append(names, v.Name)
	}
	if !slices.Equal(names, []string{"t1", "t1-snap"}) {
		t.Fatalf("List = %v", names)
	}
	if got, err := d.Resize(ctx, "t1", 200*mib); err != nil || got != 200*mib {
		t.Fatalf("Resize thin = %d, %v", got, err)
	}
	// Shrinking unmaps what is cut off: lvresize alone leaves it mapped
	// ("Thin volume maps ... while the size is only ..."), and the pool
	// would not get the space back.
	writeAt(t, d, "t1", pattern(4*mib), 100*mib)
	if got, err := d.Resize(ctx, "t1", 8*mib); err != nil || got != 8*mib {
		t.Fatalf("Resize thin down = %d, %v", got, err)
	}
	out := e.sh("lvs", "--noheadings", "-o", "data_percent", e.vg+"/t1")
	if strings.Contains(out, "maps") || strings.TrimSpace(out) != "50.00" {
		t.Fatalf("thin LV after shrinking from 200 to 8 MiB with 4 MiB written at 0 and at 100 MiB: %s", out)
	}
	if err := d.Remove(ctx, "t1-snap"); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
}

func TestReplace(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	create := func(name string) (volmap.Volume, []byte) {
		v, err := d.Create(ctx, name, 4*mib, meta.Attrs{Mode: 0o600, Size: -1})
		if err != nil {
			t.Fatal(err)
		}
		data := pattern(64 << 10)
		writeAt(t, d, name, data, 0)
		return v, data
	}
	a, aData := create("a")
	b, _ := create("b")
	if _, err := timed(t, "Replace", func() (int, error) { return 0, d.Replace(ctx, "a", "b") }); err != nil {
		t.Fatal(err)
	}
	rows := e.lvs()
	if len(rows) != 1 || rows["b"].uuid != a.ID {
		t.Fatalf("lvs after Replace: %v (want only b with a's UUID)", rows)
	}
	if !bytes.Equal(readAt(t, d, "b", 64<<10, 0), aData) {
		t.Fatal("b does not hold a's data")
	}
	_ = b
	// Replace onto a missing name is a rename.
	if err := d.Replace(ctx, "b", "c"); err != nil {
		t.Fatal(err)
	}

	// Failure: the target is open elsewhere, so the replaced volume cannot
	// be removed; everything is put back.
	x, xData := create("x")
	y, yData := create("y")
	pid := e.holdOpen("y")
	err := d.Replace(ctx, "x", "y")
	if !errors.Is(err, volmap.ErrInUse) || !strings.Contains(err.Error(), strconv.Itoa(pid)) {
		t.Fatalf("Replace onto an open file: %v", err)
	}
	t.Logf("Replace onto an open file: %v", err)
	rows = e.lvs()
	if rows["x"].uuid != x.ID || rows["y"].uuid != y.ID || len(rows) != 3 {
		t.Fatalf("lvs after failed Replace: %v", rows)
	}
	if !bytes.Equal(e.readDev("x", 64<<10), xData) || !bytes.Equal(e.readDev("y", 64<<10), yData) {
		t.Fatal("data changed by a failed Replace")
	}
	// The target was not a file of the mount: refused before any change.
	e.sh("lvcreate", "-q", "--type", "thin-pool", "-L", "8m", "-n", "pool", e.vg)
	if err := d.Replace(ctx, "x", "pool"); !errors.Is(err, volmap.ErrExists) {
		t.Fatalf("Replace onto a pool: %v", err)
	}
}

func TestRemoveInUse(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	if _, err := d.Create(ctx, "vm1", 8*mib, meta.Attrs{Mode: 0o600, Size: -1}); err != nil {
		t.Fatal(err)
	}
	data := pattern(mib)
	writeAt(t, d, "vm1", data, 0)
	pid := e.holdOpen("vm1")
	err := d.Remove(ctx, "vm1")
	if !errors.Is(err, volmap.ErrInUse) {
		t.Fatalf("Remove of an open LV: %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "is open") || !strings.Contains(msg, fmt.Sprintf("pid %d (sleep)", pid)) {
		t.Fatalf("message does not say who holds it: %v", err)
	}
	t.Logf("Remove of an open LV: %v", err)
	if _, ok := e.lvs()["vm1"]; !ok {
		t.Fatal("LV gone")
	}
	if !bytes.Equal(e.readDev("vm1", mib), data) {
		t.Fatal("data changed")
	}

	// A device stacked on it is named too.
	if _, err := d.Create(ctx, "vm2", 4*mib, meta.Attrs{Size: -1}); err != nil {
		t.Fatal(err)
	}
	holder := e.vg + "-stack"
	e.sh("dmsetup", "create", holder, "--table", "0 8192 linear "+filepath.Join("/dev/mapper", volmap.DMName(e.vg, "vm2"))+" 0")
	t.Cleanup(func() { e.try("dmsetup", "remove", holder) })
	if err := d.Remove(ctx, "vm2"); !errors.Is(err, volmap.ErrInUse) || !strings.Contains(err.Error(), holder) {
		t.Fatalf("Remove of an LV with a stacked device: %v", err)
	}
	e.sh("dmsetup", "remove", holder)
	if err := d.Remove(ctx, "vm2"); err != nil {
		t.Fatal(err)
	}
}

// Detach hides the LV of a file removed while volfs has it open; the name
// is free at once, Reattach puts it back, Purge removes it. An LV open
// outside this process is not detached: it could not be purged later.
func TestDetach(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	if _, err := d.Create(ctx, "vm1", 4*mib, meta.Attrs{Mode: 0o600, Size: -1}); err != nil {
		t.Fatal(err)
	}
	data := pattern(mib)
	writeAt(t, d, "vm1", data, 0)
	own, err := d.Open(ctx, "vm1", os.O_RDONLY) // volfs's own fd does not count
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	token, err := d.Detach(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Lookup(ctx, "vm1"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("Lookup of a detached file: %v", err)
	}
	if vols, _ := d.List(ctx); len(vols) != 0 {
		t.Fatalf("List shows a detached file: %+v", vols)
	}
	if _, ok := e.lvs()[token]; !ok || !strings.HasPrefix(token, "+2F") {
		t.Fatalf("detached LV %q not in %v", token, e.lvs())
	}
	b := alignedBuf(mib)
	if _, err := own.ReadAt(b, 0); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("read through the open fd after Detach: %v", err)
	}
	if err := d.Reattach(ctx, token, "vm1"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAt(t, d, "vm1", mib, 0), data) {
		t.Fatal("data after Reattach")
	}

	// Held by another process: refused, nothing renamed.
	holder := exec.Command("sh", "-c", `exec 3<"$1"; read -r _`, "sh", filepath.Join("/dev", e.vg, "vm1"))
	stdin, _ := holder.StdinPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if testutil.SameFile(fmt.Sprintf("/proc/%d/fd/3", holder.Process.Pid), filepath.Join("/dev", e.vg, "vm1")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("holder did not start")
		}
	}
	_, err = d.Detach(ctx, "vm1")
	if !errors.Is(err, volmap.ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d (sh)", holder.Process.Pid)) {
		t.Fatalf("Detach of an LV held elsewhere: %v", err)
	}
	if _, ok := e.lvs()["vm1"]; !ok {
		t.Fatal("refused Detach renamed the LV")
	}
	stdin.Close()
	_ = holder.Wait()

	token, err = d.Detach(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	own.Close()
	if err := d.Purge(ctx, "vm1"); !errors.Is(err, volmap.ErrInvalidName) {
		t.Fatalf("Purge of a file's LV: %v", err)
	}
	if err := d.Purge(ctx, token); err != nil {
		t.Fatal(err)
	}
	if rows := e.lvs(); len(rows) != 0 {
		t.Fatalf("LVs after Purge: %v", rows)
	}
}

func TestNoSpace(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	if _, err := d.Create(ctx, "small", 4*mib, meta.Attrs{Size: -1}); err != nil {
		t.Fatal(err)
	}
	e.sh("lvcreate", "-q", "-Wn", "-l", "100%FREE", "-n", "filler", e.vg)
	before := e.lvs()
	_, err := d.Create(ctx, "big", 8*mib, meta.Attrs{Size: -1})
	if !errors.Is(err, volmap.ErrNoSpace) {
		t.Fatalf("Create in a full VG: %v", err)
	}
	t.Logf("Create in a full VG: %v", err)
	if after := e.lvs(); len(after) != len(before) {
		t.Fatalf("a failed Create left LVs: %v", after)
	}
	if _, err := d.Resize(ctx, "small", 64*mib); !errors.Is(err, volmap.ErrNoSpace) {
		t.Fatalf("Resize in a full VG: %v", err)
	}
	if row := e.lvs()["small"]; row.size != 4*mib {
		t.Fatalf("failed resize changed the size: %+v", row)
	}
	sp, err := d.Space(ctx)
	if err != nil || sp.Free != 0 || sp.Total < 3000*mib {
		t.Fatalf("Space = %+v, %v", sp, err)
	}

	// A full thin pool.
	e.sh("lvremove", "-q", "--yes", e.vg+"/filler")
	// --errorwhenfull: a write to a full pool fails at once instead of
	// being queued for 60 s.
	e.sh("lvcreate", "-q", "--type", "thin-pool", "-L", "8m", "-n", "tp", e.vg)
	e.sh("lvchange", "-q", "--errorwhenfull", "y", e.vg+"/tp")
	dt := e.driver(lvm.Config{ThinPool: "tp"})
	if _, err := dt.Create(ctx, "t", 16*mib, meta.Attrs{Size: -1}); err != nil {
		t.Fatal(err)
	}
	f, err := dt.Open(ctx, "t", os.O_RDWR|syscall.O_DIRECT)
	if err != nil {
		t.Fatal(err)
	}
	_, werr := f.WriteAt(pattern(12*mib), 0) // overfills the pool
	f.Close()
	t.Logf("filling the pool: %v; %s", werr, e.sh("lvs", "-o", "lv_name,lv_size,data_percent", e.vg))
	before = e.lvs()
	if _, err := dt.Create(ctx, "t2", 4*mib, meta.Attrs{Size: -1}); !errors.Is(err, volmap.ErrNoSpace) {
		t.Fatalf("Create in a full thin pool: %v", err)
	}
	if after := e.lvs(); len(after) != len(before) {
		t.Fatalf("a failed Create left LVs: %v", after)
	}
}

func TestNames(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	a := meta.Attrs{Size: -1}
	// Names LVM refuses as they are, stored escaped.
	for file, lv := range map[string]string{"snapshot1": "+73napshot1", "x_tmeta": "x+5Ftmeta", "-dash": "+2Ddash", "..": "+2E.", "ü.img": "+C3+BC.img"} {
		if _, err := d.Create(ctx, file, mib, a); err != nil {
			t.Fatalf("Create(%q): %v", file, err)
		}
		if _, ok := e.lvs()[lv]; !ok {
			t.Fatalf("Create(%q): no LV %q in %v", file, lv, e.lvs())
		}
		if _, err := d.Lookup(ctx, file); err != nil {
			t.Fatal(err)
		}
	}
	// Refused before lvm runs.
	n := e.cmd.n.Load()
	for file, want := range map[string]error{
		"a/b":                    volmap.ErrInvalidName,
		"":                       volmap.ErrInvalidName,
		strings.Repeat("x", 122): volmap.ErrNameTooLong, // vg "vtN" + 122 > 125
		strings.Repeat("x-", 50): volmap.ErrNameTooLong, // device-mapper name with '-' doubled
		strings.Repeat("é", 30):  volmap.ErrNameTooLong, // 180 escaped characters
	} {
		if _, err := d.Create(ctx, file, mib, a); !errors.Is(err, want) {
			t.Errorf("Create(%q): %v, want %v", file, err, want)
		}
	}
	if e.cmd.n.Load() != n {
		t.Errorf("invalid names reached lvm")
	}
	// What lvm itself says about names it refuses maps to the same errors.
	r := &lvm.Runner{}
	if _, err := r.Run(ctx, "lvcreate", "-L", "4m", "-n", "snapshot1", e.vg); !errors.Is(err, volmap.ErrInvalidName) {
		t.Errorf("lvcreate snapshot1: %v", err)
	}
	if _, err := r.Run(ctx, "lvcreate", "-L", "4m", "-n", strings.Repeat("y", 122), e.vg); !errors.Is(err, volmap.ErrNameTooLong) {
		t.Errorf("lvcreate with a long name: %v", err)
	}
	if _, err := r.Run(ctx, "lvcreate", "-L", "4m", "-n", "+73napshot1", e.vg); !errors.Is(err, volmap.ErrExists) {
		t.Errorf("lvcreate of an existing LV: %v", err)
	}
	// LVs whose names are not canonical encodings are not files.
	e.sh("lvcreate", "-q", "-L", "4m", "-n", "+61", e.vg)
	if _, err := d.Lookup(ctx, "a"); !errors.Is(err, volmap.ErrNotFound) {
		t.Errorf("non-canonical LV shown as a file: %v", err)
	}
}

func TestExternalChanges(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	if vols, err := d.List(ctx); err != nil || len(vols) != 0 {
		t.Fatalf("List = %v, %v", vols, err)
	}
	waitFor := func(what string, want bool) {
		t.Helper()
		start := time.Now()
		for {
			_, err := d.Lookup(ctx, "ext")
			if (err == nil) == want {
				t.Logf("%s seen after %v", what, time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s not seen after 5 s (last: %v)", what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	start := time.Now()
	e.sh("lvcreate", "-q", "-L", "4m", "-n", "ext", e.vg)
	t.Logf("plain lvcreate: %v", time.Since(start).Round(time.Millisecond))
	waitFor("lvcreate", true)
	v, err := d.Lookup(ctx, "ext")
	if err != nil || !v.Attrs.Equal(lvm.DefaultAttrs(v.Attrs.Mtime)) {
		t.Fatalf("an untagged LV: %+v, %v", v, err)
	}
	// Its times are its creation time (lv_time, whole seconds).
	if age := time.Since(v.Attrs.Mtime); age < -time.Second || age > time.Minute {
		t.Fatalf("an untagged LV's mtime is %v, want its creation time", v.Attrs.Mtime)
	}
	e.sh("lvremove", "-q", "--yes", e.vg+"/ext")
	waitFor("lvremove", false)

	// A mount limited to a tag sees only tagged LVs, and tags what it
	// creates.
	e.sh("lvcreate", "-q", "-L", "4m", "-n", "untagged", e.vg)
	e.sh("lvcreate", "-q", "-L", "4m", "-n", "tagged", "--addtag", "mnt1", e.vg)
	dt := e.driver(lvm.Config{Tag: "mnt1"})
	if _, err := dt.Create(ctx, "made", mib, meta.Attrs{Size: -1}); err != nil {
		t.Fatal(err)
	}
	vols, err := dt.List(ctx)
	if err != nil || len(vols) != 2 || vols[0].Name != "made" || vols[1].Name != "tagged" {
		t.Fatalf("tagged List = %+v, %v", vols, err)
	}
	if row := e.lvs()["made"]; !slices.Contains(row.tags, "mnt1") || slices.Contains(row.tags, lvm.DefaultTag) {
		t.Fatalf("created LV tags %v", row.tags)
	}
	for _, op := range []func() error{
		func() error { _, err := dt.Open(ctx, "untagged", os.O_RDONLY); return err },
		func() error { return dt.Remove(ctx, "untagged") },
		func() error { return dt.SetAttrs(ctx, "untagged", meta.Attrs{Size: -1}) },
		func() error { _, err := dt.Resize(ctx, "untagged", 8*mib); return err },
	} {
		if err := op(); !errors.Is(err, volmap.ErrNotFound) {
			t.Fatalf("operation on an LV outside the mount: %v", err)
		}
	}
	if err := dt.Replace(ctx, "made", "untagged"); !errors.Is(err, volmap.ErrExists) {
		t.Fatalf("Replace onto an LV outside the mount: %v", err)
	}
	if _, ok := e.lvs()["untagged"]; !ok {
		t.Fatal("LV outside the mount was touched")
	}
	if _, err := lvm.New(ctx, lvm.Config{VG: e.vg, Tag: "volfs.x"}); !errors.Is(err, volmap.ErrInvalidName) {
		t.Fatalf("tag in the attribute namespace: %v", err)
	}
}

func TestTagsRoundTrip(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	a := meta.Attrs{
		Mode: 0o4751, UID: 1000, GID: 64055,
		Atime: time.Unix(1700000000, 1), Mtime: time.Unix(1700000001, 999999999), Ctime: time.Unix(5, 0),
		Size:   123456789,
		Xattrs: map[string][]byte{"user.a": []byte("x"), "user.bin": bytes.Repeat([]byte{0, 255, ',', '='}, 700), "user.empty": {}},
	}
	if _, err := d.Create(ctx, "tags", mib, a); err != nil {
		t.Fatal(err)
	}
	// A fresh driver reads them back from LVM (with extra configuration
	// in both of lvm's --config forms, which the wrapper merges with its
	// own).
	got, err := e.driver(lvm.Config{LVMConfig: "activation{udev_sync=0 udev_rules=0} devices/obtain_device_list_from_udev=0"}).Lookup(ctx, "tags")
	if err != nil || !got.Attrs.Equal(a) {
		t.Fatalf("Lookup = %+v, %v\nwant %+v", got.Attrs, err, a)
	}
	b := a.Clone()
	b.Xattrs = nil
	b.Atime = time.Time{}
	if err := d.SetAttrs(ctx, "tags", b); err != nil {
		t.Fatal(err)
	}
	row := e.lvs()["tags"]
	if len(hasTag(row.tags, "volfs.x=")) != 0 || len(hasTag(row.tags, "volfs.atime=")) != 0 || !slices.Contains(row.tags, lvm.DefaultTag) {
		t.Fatalf("tags after SetAttrs: %v", row.tags)
	}
	if got, err := e.driver(lvm.Config{}).Lookup(ctx, "tags"); err != nil || !got.Attrs.Equal(b) {
		t.Fatalf("Lookup after SetAttrs = %+v, %v", got.Attrs, err)
	}
}

func TestLockedByOtherTool(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("no flock")
	}
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	// Another tool holds the VG lock for 2 s: the driver waits for it.
	lock := exec.Command("flock", "/run/lock/lvm/V_"+e.vg, "sleep", "2")
	if err := lock.Start(); err != nil {
		t.Fatal(err)
	}
	defer lock.Wait()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if _, err := d.Create(context.Background(), "waited", mib, meta.Attrs{Size: -1}); err != nil {
		t.Fatal(err)
	}
	t.Logf("Create while the VG lock was held: %v", time.Since(start).Round(time.Millisecond))
	if time.Since(start) < time.Second {
		t.Errorf("Create did not wait for the lock")
	}
}

func TestNewErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := lvm.New(ctx, lvm.Config{VG: "nosuchvg"}); !errors.Is(err, volmap.ErrNotFound) || !strings.Contains(err.Error(), "nosuchvg") {
		t.Fatalf("missing VG: %v", err)
	}
	if _, err := lvm.New(ctx, lvm.Config{VG: e.vg, ThinPool: "nopool"}); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("missing pool: %v", err)
	}
	e.sh("lvcreate", "-q", "-L", "4m", "-n", "lin", e.vg)
	if _, err := lvm.New(ctx, lvm.Config{VG: e.vg, ThinPool: "lin"}); err == nil || !strings.Contains(err.Error(), "not a thin pool") {
		t.Fatalf("linear LV as pool: %v", err)
	}
	if _, err := lvm.New(ctx, lvm.Config{VG: "../x"}); !errors.Is(err, volmap.ErrInvalidName) {
		t.Fatalf("bad VG name: %v", err)
	}
}

func TestConformance(t *testing.T) {
	e := newEnv(t)
	e.sh("lvcreate", "-q", "--type", "thin-pool", "-L", "512m", "-n", "pool", e.vg)
	t.Run("linear", func(t *testing.T) {
		volmaptest.Run(t, e.driver(lvm.Config{Tag: "linear"}), volmaptest.Options{})
	})
	t.Run("thin", func(t *testing.T) {
		volmaptest.Run(t, e.driver(lvm.Config{ThinPool: "pool", Tag: "thin"}), volmaptest.Options{})
	})
}

func TestConcurrent(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	if _, err := d.Create(ctx, "c0", mib, meta.Attrs{Size: -1}); err != nil {
		t.Fatal(err)
	}
	// Callers that find the listing stale at the same time share one lvs.
	time.Sleep(1100 * time.Millisecond)
	n := e.cmd.n.Load()
	errs := make(chan error, 8)
	for range 8 {
		go func() { _, err := d.List(ctx); errs <- err }()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if ran := e.cmd.n.Load() - n; ran != 1 {
		t.Errorf("8 concurrent Lists ran lvs %d times", ran)
	}

	// Readers while the VG changes: c0 never disappears, c1 comes and goes.
	stop := make(chan struct{})
	done := make(chan error, 4)
	for range 4 {
		go func() {
			for {
				select {
				case <-stop:
					done <- nil
					return
				default:
				}
				if _, err := d.Lookup(ctx, "c0"); err != nil {
					done <- fmt.Errorf("Lookup(c0): %w", err)
					return
				}
				if _, err := d.Lookup(ctx, "c1"); err != nil && !errors.Is(err, volmap.ErrNotFound) {
					done <- fmt.Errorf("Lookup(c1): %w", err)
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	for _, step := range []func() error{
		func() error { _, err := d.Create(ctx, "c1", mib, meta.Attrs{Size: -1}); return err },
		func() error { return d.SetAttrs(ctx, "c0", meta.Attrs{Mode: 0o644, Size: 5}) },
		func() error { return d.Rename(ctx, "c1", "c2") },
		func() error { return d.Replace(ctx, "c2", "c1") },
		func() error { return d.Remove(ctx, "c1") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if v, err := d.Lookup(ctx, "c0"); err != nil || v.Attrs.Mode != 0o644 || v.Attrs.Size != 5 {
		t.Fatalf("c0 = %+v, %v", v, err)
	}
}

// Remove, Rename and Detach act on the LV the listing named, which may be
// up to a CacheTTL old: when another tool has meanwhile renamed that LV
// away and made a new one under its name, the driver refuses (ErrChanged)
// and leaves both alone instead of removing or renaming the new one.
func TestActsByIdentity(t *testing.T) {
	e := newEnv(t)
	// A long TTL: a listing read before the change is the one each call uses.
	d := e.driver(lvm.Config{CacheTTL: time.Hour})
	ctx := context.Background()
	for _, name := range []string{"rm", "mv", "det", "rsrc", "rsrc2", "rdst"} {
		if _, err := d.Create(ctx, name, 4*mib, meta.Attrs{Size: -1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name, op string
		do       func() error
	}{
		{"rm", "Remove", func() error { return d.Remove(ctx, "rm") }},
		{"mv", "Rename", func() error { return d.Rename(ctx, "mv", "moved") }},
		{"det", "Detach", func() error { _, err := d.Detach(ctx, "det"); return err }},
		// mv over an existing file: the source recreated, then the target.
		{"rsrc", "Replace", func() error { return d.Replace(ctx, "rsrc", "rdst") }},
		{"rdst", "Replace", func() error { return d.Replace(ctx, "rsrc2", "rdst") }},
	} {
		// The listing the call will use (a refusal drops it, so it is
		// read again for each case).
		if _, err := d.Lookup(ctx, c.name); err != nil {
			t.Fatal(err)
		}
		// Behind the driver's back, within the TTL: the name now holds
		// another LV, the old one lives on as NAME_old.
		e.sh("lvrename", "-q", e.vg, c.name, c.name+"_old")
		e.sh("lvcreate", "-q", "-L", "4m", "-n", c.name, e.vg)
		before := e.lvs()
		err := c.do()
		t.Logf("%s of a recreated name: %v", c.op, err)
		if !errors.Is(err, volmap.ErrChanged) {
			t.Errorf("%s of a name another tool recreated: %v, want ErrChanged", c.op, err)
		}
		after := e.lvs()
		for name, row := range before {
			if a, ok := after[name]; !ok || a.uuid != row.uuid {
				t.Errorf("%s: LV %s (uuid %s) was removed or renamed: now %+v", c.op, name, row.uuid, after)
			}
		}
		if len(after) != len(before) {
			t.Errorf("%s: LVs before: %v, after: %v", c.op, before, after)
		}
	}
	// Another tool takes the source's name after the replace's check, in
	// the moment before its lvrename (a wrapper of lvm does it right
	// before that command): the renames are undone and nothing is
	// removed.
	wrapper := filepath.Join(t.TempDir(), "lvm")
	script := fmt.Sprintf(`#!/bin/sh
case "$*" in
"lvrename "*" %[1]s rs3 rd3") lvm lvrename -q %[1]s rs3 rs3_old && lvm lvcreate -q -L 4m -n rs3 %[1]s >/dev/null ;;
esac
exec lvm "$@"
`, e.vg)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d3 := e.driver(lvm.Config{CacheTTL: time.Hour, LVMPath: wrapper})
	for _, name := range []string{"rs3", "rd3"} {
		if _, err := d3.Create(ctx, name, 4*mib, meta.Attrs{Size: -1}); err != nil {
			t.Fatal(err)
		}
	}
	before := e.lvs()
	err := d3.Replace(ctx, "rs3", "rd3")
	t.Logf("Replace whose source another tool replaced before its lvrename: %v", err)
	if !errors.Is(err, volmap.ErrChanged) {
		t.Errorf("Replace whose source was replaced before its lvrename: %v, want ErrChanged", err)
	}
	after := e.lvs()
	if after["rd3"].uuid != before["rd3"].uuid || after["rs3_old"].uuid != before["rs3"].uuid ||
		after["rs3"].uuid == "" || len(after) != len(before)+1 {
		t.Errorf("LVs before the replace: %v\nafter: %v\nwant rd3 and the source (now rs3_old) kept, "+
			"the other tool's rs3 and nothing else added", before, after)
	}

	// The next calls see the new LVs and act on them.
	if err := d.Remove(ctx, "rm"); err != nil {
		t.Fatalf("Remove after the refusal: %v", err)
	}
	if _, ok := e.lvs()["rm"]; ok {
		t.Fatal("rm not removed")
	}
}

// lvm's scans never read a loop device over a file of a FUSE mount: if the
// FUSE server were this process, busy with the request that waits for the
// scan, the read would never be answered (a deadlock that no kill ends,
// the read waiting in the block layer). Here the server is this test
// process and counts the reads that reach it while the driver starts
// (its vgs and the pvs that looks for the VG's PVs, the scan that
// rediscoverPVs repeats while serving).
func TestScanSkipsFUSELoops(t *testing.T) {
	e := newEnv(t)
	disk := &countedDisk{}
	mnt := t.TempDir()
	srv, err := gofs.Mount(mnt, disk, &gofs.Options{MountOptions: fuse.MountOptions{DirectMount: true, FsName: "counted"}})
	if err != nil {
		t.Fatalf("FUSE mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	loop := strings.TrimSpace(e.sh("losetup", "--find", "--show", filepath.Join(mnt, "disk")))
	t.Cleanup(func() { e.try("losetup", "-d", loop) })
	disk.reads.Store(0)
	d := e.driver(lvm.Config{})
	if _, err := d.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := disk.reads.Load(); n != 0 {
		t.Fatalf("lvm read %s, a loop device over a file of a FUSE mount, %d times", loop, n)
	}
	// The loop device is still readable (the count works).
	e.sh("dd", "if="+loop, "of=/dev/null", "bs=4096", "count=1", "iflag=direct")
	if disk.reads.Load() == 0 {
		t.Fatal("a read of the loop device did not reach the FUSE server")
	}
}

// TestCreatedLV checks that Create runs the lvcreate alone and that the
// LV it puts into the listing without an lvs (described from the request
// and its device) is the LV lvs reports, for a linear and a thin file: lookups, opens, resizes and
// attribute changes use it until the next refresh.
func TestCreatedLV(t *testing.T) {
	e := newEnv(t)
	e.sh("lvcreate", "-q", "--type", "thin-pool", "-L", "64m", "-n", "pool", e.vg)
	ctx := context.Background()
	a := meta.Attrs{Mode: 0o640, UID: 7, GID: 8, Size: 12345, Mtime: time.Unix(1700000000, 5)}
	for _, cfg := range []lvm.Config{{}, {ThinPool: "pool"}} {
		d := e.driver(cfg)
		name := "made-" + cfg.ThinPool
		if _, err := d.List(ctx); err != nil { // as a mount has
			t.Fatal(err)
		}
		n := e.cmd.n.Load()
		if _, err := d.Create(ctx, name, 5*mib, a); err != nil {
			t.Fatal(err)
		}
		if ran := e.cmd.n.Load() - n; ran != 1 {
			t.Errorf("%s: Create ran %d lvm commands, want the lvcreate alone", name, ran)
		}
		got, ok := d.CachedLV(name)
		if !ok {
			t.Fatalf("%s: not in the listing after Create", name)
		}
		want, err := d.ReadLV(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if d := got.Created.Sub(want.Created); d < -5*time.Second || d > 5*time.Second {
			t.Errorf("%s: created %v, lvs says %v", name, got.Created, want.Created)
		}
		got.Created, want.Created = time.Time{}, time.Time{}
		slices.Sort(got.Tags)
		slices.Sort(want.Tags)
		if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
			t.Errorf("%s: Create described the LV as\n%+v\nlvs reports\n%+v", name, got, want)
		}
	}
}

// TestListingRenewal: an expired listing serves again without an lvs when
// nothing changed the VG (its stamp: the PVs' metadata area headers and
// the device-mapper devices), and never after another tool's change: each
// kind of change below is made while the listing is expired, and the next
// request must see it.
func TestListingRenewal(t *testing.T) {
	e := newEnv(t)
	const ttl = 300 * time.Millisecond
	d := e.driver(lvm.Config{CacheTTL: ttl})
	ctx := context.Background()
	for _, name := range []string{"a", "b", "c"} {
		if _, err := d.Create(ctx, name, mib, meta.Attrs{Mode: 0o644, Size: -1}); err != nil {
			t.Fatal(err)
		}
	}
	// expire reads a listing, lets its refresh end and waits past the TTL.
	expire := func() {
		t.Helper()
		if _, err := d.List(ctx); err != nil {
			t.Fatal(err)
		}
		d.WaitListing()
		time.Sleep(2 * ttl)
	}
	lookup := func(name string) (volmap.Volume, error) { return d.Lookup(ctx, name) }

	expire()
	r := d.Renewals()
	n := e.cmd.n.Load()
	if vols, err := d.List(ctx); err != nil || len(vols) != 3 {
		t.Fatalf("List = %v, %v", vols, err)
	}
	if d.Renewals() != r+1 {
		t.Fatal("an expired listing of an unchanged VG was not renewed")
	}
	d.WaitListing()
	t.Logf("a renewal ran %d lvm commands (the refresh behind it)", e.cmd.n.Load()-n)

	for _, c := range []struct {
		what  string
		cmd   []string
		check func() error
	}{
		{"lvrename", []string{"lvrename", e.vg, "a", "a2"}, func() error {
			if _, err := lookup("a"); !errors.Is(err, volmap.ErrNotFound) {
				return fmt.Errorf("the old name: %v", err)
			}
			_, err := lookup("a2")
			return err
		}},
		{"lvextend", []string{"lvextend", "-q", "-L", "+4m", e.vg + "/b"}, func() error {
			if v, err := lookup("b"); err != nil || v.Size != 8*mib {
				return fmt.Errorf("size %d, %v; want %d", v.Size, err, 8*mib)
			}
			return nil
		}},
		{"lvchange --addtag", []string{"lvchange", "--deltag", "volfs.mode=0644", "--addtag", "volfs.mode=0600", e.vg + "/c"}, func() error {
			if v, err := lookup("c"); err != nil || v.Attrs.Mode != 0o600 {
				return fmt.Errorf("mode %o, %v; want 0600", v.Attrs.Mode, err)
			}
			return nil
		}},
		{"lvcreate", []string{"lvcreate", "-q", "-an", "-Zn", "-Wn", "-L", "4m", "-n", "d", e.vg}, func() error {
			_, err := lookup("d")
			return err
		}},
		{"lvremove", []string{"lvremove", "-q", "-y", e.vg + "/d"}, func() error {
			if _, err := lookup("d"); !errors.Is(err, volmap.ErrNotFound) {
				return fmt.Errorf("still there: %v", err)
			}
			return nil
		}},
		// Activation commits nothing: the device-mapper devices show it.
		{"lvchange -an", []string{"lvchange", "-an", e.vg + "/b"}, nil},
		{"lvchange -ay", []string{"lvchange", "-ay", e.vg + "/b"}, nil},
	} {
		expire()
		e.sh(c.cmd[0], c.cmd[1:]...)
		r := d.Renewals()
		if c.check != nil {
			if err := c.check(); err != nil {
				t.Errorf("after %s by another tool, made while the listing was expired: %v", c.what, err)
			}
		} else if _, err := d.List(ctx); err != nil {
			t.Fatal(err)
		}
		if d.Renewals() != r {
			t.Errorf("the listing was renewed after %s by another tool", c.what)
		}
	}
	// And renewals go on once the changes are read.
	expire()
	r = d.Renewals()
	if _, err := lookup("a2"); err != nil || d.Renewals() != r+1 {
		t.Fatalf("no renewal after the changes were read: %v", err)
	}

	// The driver's own removal takes the LV out of its listing, which
	// keeps serving (rm, then ls -l, waits for no lvs of the VG).
	d2 := e.driver(lvm.Config{CacheTTL: 10 * time.Minute})
	if vols, err := d2.List(ctx); err != nil || len(vols) != 3 {
		t.Fatalf("List = %v, %v", vols, err)
	}
	if err := d2.Remove(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	n = e.cmd.n.Load()
	if vols, err := d2.List(ctx); err != nil || len(vols) != 2 {
		t.Fatalf("List after Remove = %v, %v", vols, err)
	}
	if _, err := d2.Lookup(ctx, "c"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("Lookup of the removed file: %v", err)
	}
	if got := e.cmd.n.Load() - n; got != 0 {
		t.Errorf("List and Lookup after the driver's own Remove ran %d lvm commands, want none", got)
	}
	if _, ok := e.lvs()["c"]; ok {
		t.Fatal("lvs still shows the removed LV")
	}

	// So do its own rename and replace (mv over an existing file): the
	// LV under its new name, at its new device path, the old name (and
	// the replaced LV) gone, with no lvm command.
	before, err := d2.Lookup(ctx, "a2")
	if err != nil {
		t.Fatal(err)
	}
	moved := func(op, from, to string, files int, do func() error) {
		t.Helper()
		if err := do(); err != nil {
			t.Fatal(err)
		}
		n := e.cmd.n.Load()
		if vols, err := d2.List(ctx); err != nil || len(vols) != files {
			t.Fatalf("List after %s = %v, %v; want %d files", op, vols, err, files)
		}
		if _, err := d2.Lookup(ctx, from); !errors.Is(err, volmap.ErrNotFound) {
			t.Fatalf("Lookup of %s after %s: %v", from, op, err)
		}
		if v, err := d2.Lookup(ctx, to); err != nil || v.ID != before.ID || v.Size != before.Size {
			t.Fatalf("Lookup of %s after %s = %+v, %v; want %+v", to, op, v, err, before)
		}
		if got := e.cmd.n.Load() - n; got != 0 {
			t.Errorf("List and Lookup after the driver's own %s ran %d lvm commands, want none", op, got)
		}
		f, err := d2.Open(ctx, to, os.O_RDONLY)
		if err != nil {
			t.Fatalf("Open of %s after %s: %v", to, op, err)
		}
		f.Close()
	}
	moved("Rename", "a2", "a3", 2, func() error { return d2.Rename(ctx, "a2", "a3") })
	if _, ok := e.lvs()["a3"]; !ok {
		t.Fatal("lvs does not show the renamed LV")
	}
	moved("Replace", "a3", "b", 1, func() error { return d2.Replace(ctx, "a3", "b") })
	rows := e.lvs()
	if _, ok := rows["a3"]; ok || rows["b"].uuid != before.ID {
		t.Fatalf("lvs after Replace: %v; want b with uuid %s and no a3", rows, before.ID)
	}
}

// Open, SetAttrs and Resize bound to the LV a caller listed (the file a
// kernel inode stands for) refuse with ErrChanged once another tool or
// host has removed that LV and made a new one under its name, and leave
// the new LV alone; bound to the new LV's UUID they work. An inode kept
// by an O_PATH descriptor reached the new LV through its old mode and
// owner.
func TestBoundToListedLV(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{CacheTTL: time.Millisecond})
	ctx := context.Background()
	if _, err := d.Create(ctx, "b", 4*mib, meta.Attrs{Mode: 0o600, Size: -1}); err != nil {
		t.Fatal(err)
	}
	old, err := d.Lookup(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	e.sh("lvremove", "-q", "-y", e.vg+"/b")
	e.sh("lvcreate", "-q", "-Wn", "-L", "8m", "-n", "b", e.vg)
	before := e.lvs()["b"]
	time.Sleep(10 * time.Millisecond) // the listing has expired

	e.refusesStale(d, "b", old.ID, before)

	now, err := d.Lookup(ctx, "b")
	if err != nil || now.ID == old.ID {
		t.Fatalf("Lookup after the recreate: %+v, %v", now, err)
	}
	f, err := d.OpenBound(ctx, "b", now.ID, os.O_RDONLY)
	if err != nil {
		t.Fatalf("OpenBound of the LV the name has: %v", err)
	}
	f.Close()
	if err := d.SetAttrsBound(ctx, "b", now.ID, meta.Attrs{Mode: 0o640, Size: -1}); err != nil {
		t.Fatalf("SetAttrsBound of the LV the name has: %v", err)
	}
	if got, err := d.ResizeBound(ctx, "b", now.ID, 12*mib); err != nil || got != 12*mib {
		t.Fatalf("ResizeBound of the LV the name has: %d, %v", got, err)
	}
}

// A change of tags alone (attributes, at every close that wrote) leaves
// no copy of the VG's metadata in lvm's archive directory; a change of an
// LV does. Each copy is the whole VG's metadata, kept 30 days.
func TestTagChangesNotArchived(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	archived := func() int {
		m, _ := filepath.Glob("/etc/lvm/archive/" + e.vg + "_*.vg")
		return len(m)
	}
	n0 := archived()
	if _, err := d.Create(ctx, "a", 4*mib, meta.Attrs{Mode: 0o600, Size: -1}); err != nil {
		t.Fatal(err)
	}
	n1 := archived()
	if n1 == n0 {
		t.Skip("lvm archives nothing here (backup/archive=0 in lvm.conf?)")
	}
	for i := range 5 {
		if err := d.SetAttrs(ctx, "a", meta.Attrs{Mode: 0o600, Size: int64(1000 + i)}); err != nil {
			t.Fatal(err)
		}
	}
	if n := archived(); n != n1 {
		t.Errorf("5 tag changes added %d archived copies of the metadata, want 0", n-n1)
	}
	if _, err := d.Resize(ctx, "a", 8*mib); err != nil {
		t.Fatal(err)
	}
	if n := archived(); n == n1 {
		t.Error("an lvresize was not archived")
	}
}

// xattrs that would leave less than a quarter of the VG's metadata area
// are refused with ErrNoSpace, file after file, before LVM's own limit:
// the VG's own changes (a new LV, a tag of another file) still work
// afterwards. Before, a user owning a few dozen files could fill the area
// with xattrs, and every lvm change of the VG failed.
func TestXattrsLeaveMetadataRoom(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{})
	ctx := context.Background()
	vgs := func() string {
		return strings.TrimSpace(e.sh("vgs", "--noheadings", "--units", "b", "-o", "vg_mda_size,vg_mda_free", e.vg))
	}
	t.Logf("metadata area (size, free): %s", vgs())
	xattrs := map[string][]byte{}
	for i := range 4 {
		xattrs[fmt.Sprintf("user.k%d", i)] = bytes.Repeat([]byte{byte('a' + i)}, meta.MaxXattrValue-8)
	}
	refused := -1
	for i := range 60 {
		name := fmt.Sprintf("x%d", i)
		if _, err := d.Create(ctx, name, 4*mib, meta.Attrs{Mode: 0o600, Size: -1}); err != nil {
			t.Fatalf("create %s after %d files with xattrs (%s): %v", name, i, vgs(), err)
		}
		err := d.SetAttrs(ctx, name, meta.Attrs{Mode: 0o600, Size: -1, Xattrs: xattrs})
		if errors.Is(err, volmap.ErrNoSpace) {
			t.Logf("file %d refused: %v", i, err)
			refused = i
			break
		}
		if err != nil {
			t.Fatalf("xattrs of file %d (%s): %v", i, vgs(), err)
		}
	}
	if refused < 0 {
		t.Fatalf("60 files of 16 KiB xattrs each all accepted (%s)", vgs())
	}
	t.Logf("after the refusal: %s", vgs())
	// The VG's own changes still work.
	if _, err := d.Create(ctx, "after", 4*mib, meta.Attrs{Mode: 0o600, Size: -1}); err != nil {
		t.Fatalf("create after the refusal: %v", err)
	}
	if err := d.SetAttrs(ctx, "after", meta.Attrs{Mode: 0o644, Size: 12345}); err != nil {
		t.Fatalf("attributes without xattrs after the refusal: %v", err)
	}
	if err := d.Rename(ctx, "after", "after2"); err != nil {
		t.Fatalf("rename after the refusal: %v", err)
	}
}

// The same within the listing's TTL: the listing still names the old LV,
// but the active device under the name is the new one.
func TestBoundWithinTTL(t *testing.T) {
	e := newEnv(t)
	d := e.driver(lvm.Config{CacheTTL: time.Hour})
	ctx := context.Background()
	if _, err := d.Create(ctx, "c", 4*mib, meta.Attrs{Mode: 0o600, Size: -1}); err != nil {
		t.Fatal(err)
	}
	old, err := d.Lookup(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	e.sh("lvremove", "-q", "-y", e.vg+"/c")
	e.sh("lvcreate", "-q", "-Wn", "-L", "8m", "-n", "c", e.vg)
	before := e.lvs()["c"]
	e.refusesStale(d, "c", old.ID, before)
}

// refusesStale checks that OpenBound, SetAttrsBound and ResizeBound of name
// bound to the old LV's UUID id refuse with ErrChanged, and that the new
// LV (8 MiB, no volfs tags, before) is left as it was.
func (e *env) refusesStale(d *lvm.Driver, name, id string, before lvsRow) {
	t := e.t
	t.Helper()
	ctx := context.Background()
	if f, err := d.OpenBound(ctx, name, id, os.O_RDONLY); !errors.Is(err, volmap.ErrChanged) {
		if f != nil {
			f.Close()
		}
		t.Errorf("OpenBound of a recreated name: %v, want ErrChanged", err)
	}
	if err := d.SetAttrsBound(ctx, name, id, meta.Attrs{Mode: 0o666, Size: 1}); !errors.Is(err, volmap.ErrChanged) {
		t.Errorf("SetAttrsBound of a recreated name: %v, want ErrChanged", err)
	}
	if _, err := d.ResizeBound(ctx, name, id, 4*mib); !errors.Is(err, volmap.ErrChanged) {
		t.Errorf("ResizeBound of a recreated name: %v, want ErrChanged", err)
	}
	if after := e.lvs()[name]; after.uuid != before.uuid || after.size != 8*mib || len(hasTag(after.tags, "volfs.")) != 0 {
		t.Fatalf("the new LV was changed: before %+v, after %+v", before, after)
	}
}
