package lvm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volfs/volfs/integration/vm"
)

// The fault campaign (issue 11): the VG's PVs are device-mapper devices
// stacked on slices of the scratch disk, whose tables the tests swap
// (dmsetup suspend/load/resume) for the error and delay targets, as a
// failing or slow disk would behave, while volfs serves files on them.

// dmDev is one linear device-mapper device over a slice of the scratch
// disk, used as a PV.
type dmDev struct {
	t       *testing.T
	name    string // dm name; /dev/mapper/NAME
	disk    string
	start   int64 // first sector on disk
	sectors int64
}

func (d *dmDev) path() string { return "/dev/mapper/" + d.name }

// linear is the healthy table.
func (d *dmDev) linear() string {
	return fmt.Sprintf("0 %d linear %s %d", d.sectors, d.disk, d.start)
}

// failing is a disk whose every read and write fails.
func (d *dmDev) failing() string { return fmt.Sprintf("0 %d error", d.sectors) }

// slow delays every read, write and flush of the PV's data area by ms
// milliseconds. The first MiB (the PV label and LVM's metadata area: pe_start
// is 1 MiB) stays fast, so the test measures volfs, not lvm commands.
func (d *dmDev) slow(ms int) string {
	const meta = 2048
	return fmt.Sprintf("0 %d linear %s %d\n%d %d delay %s %d %d",
		meta, d.disk, d.start, meta, d.sectors-meta, d.disk, d.start+meta, ms)
}

// load swaps the device's table; I/O in flight completes under the old one.
func (d *dmDev) load(table string) {
	d.t.Helper()
	sh(d.t, "dmsetup", "suspend", "--noudevrules", "--noudevsync", d.name)
	cmd := exec.Command("dmsetup", "load", d.name)
	cmd.Stdin = strings.NewReader(table + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		_, _ = try("dmsetup", "resume", "--noudevrules", "--noudevsync", d.name)
		d.t.Fatalf("dmsetup load %s %q: %v\n%s", d.name, table, err, out)
	}
	sh(d.t, "dmsetup", "resume", "--noudevrules", "--noudevsync", d.name)
	d.t.Logf("%s: table now %q", d.name, strings.ReplaceAll(table, "\n", "; "))
}

// newFaultVG builds a VG over n dm devices of size bytes each, stacked on
// consecutive slices of the first scratch disk (which itself carries no PV
// label). Everything is removed when the test ends, after its mounts.
func newFaultVG(t *testing.T, n int, size int64) (*env, []*dmDev) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	disk := vm.RequireScratchDisks(t, 1)[0]
	base, err := os.MkdirTemp(tmpRoot, "t-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, vg: fmt.Sprintf("%s%d", vgPrefix, vgSeq.Add(1)), disk: disk, base: base}
	_, _ = try("wipefs", "-q", "-a", disk)
	var devs []*dmDev
	t.Cleanup(func() {
		if out, err := try("vgremove", "-q", "-ff", "--yes", e.vg); err != nil {
			t.Errorf("cleanup: vgremove %s: %v\n%s", e.vg, err, out)
		}
		for _, d := range devs {
			_, _ = try("pvremove", "-q", "-ff", "--yes", d.path())
			if out, err := try("dmsetup", "remove", "--noudevrules", "--noudevsync", "--retry", d.name); err != nil {
				t.Errorf("cleanup: dmsetup remove %s: %v\n%s", d.name, err, out)
			}
		}
		_, _ = try("dmsetup", "mknodes") // drops the removed devices' nodes
		_, _ = try("wipefs", "-q", "-a", disk)
		os.RemoveAll(base)
	})
	const first = 2048 // leave the disk's own first MiB alone
	for i := range n {
		d := &dmDev{t: t, name: fmt.Sprintf("%spv%d", e.vg, i), disk: disk,
			start: first + int64(i)*(size/512), sectors: size / 512}
		// No udev in the guest: libdevmapper makes /dev/mapper/NAME itself.
		sh(t, "dmsetup", "create", "--noudevrules", "--noudevsync", d.name, "--table", d.linear())
		sh(t, "dmsetup", "mknodes", d.name)
		devs = append(devs, d)
		sh(t, "pvcreate", "-q", "-ff", "--yes", d.path())
	}
	args := []string{"-q", "-s", strconv.Itoa(extent/kib) + "k", e.vg}
	for _, d := range devs {
		args = append(args, d.path())
	}
	sh(t, "vgcreate", args...)
	return e, devs
}

// fill writes src over the start of the file (conv=notrunc: the LV keeps
// its size and its place on its PV).
func fill(t *testing.T, src, dst string) {
	t.Helper()
	sh(t, "dd", "if="+src, "of="+dst, "bs=1M", "conv=notrunc,fsync", "status=none")
}

// isErrno reports whether err is errno (from the test's own syscalls).
func isErrno(err error, errno syscall.Errno) bool { return errors.Is(err, errno) }

// logHas reports whether a line of the server's log has every one of words.
func (m *mount) logHas(words ...string) bool {
	for _, line := range strings.Split(m.logText(), "\n") {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			return true
		}
	}
	return false
}

// A PV that fails every I/O (the dm error target): the files on it answer
// EIO to reads and writes, through a handle opened before the fault and
// through new opens; the files on the other PV keep working; the server
// stays up and its log names the volume. Once the disk is back (the linear
// table again), the same handle and new opens work without a remount and
// the data written before the fault is intact.
func TestFaultFailingPV(t *testing.T) {
	e, pvs := newFaultVG(t, 2, 256*mib)
	sh(t, "lvcreate", "-q", "-L", "16m", "-n", "a", e.vg, pvs[0].path())
	sh(t, "lvcreate", "-q", "-L", "16m", "-n", "b", e.vg, pvs[1].path())
	m := e.mount()
	srcA, srcB := e.file("A", 8*mib, 1), e.file("B", 8*mib, 2)
	fill(t, srcA, m.path("a"))
	fill(t, srcB, m.path("b"))
	wantA := fileBytes(t, srcA, 0, 8*mib)
	pid := m.serverPid()

	held, err := os.OpenFile(m.path("a"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	buf := make([]byte, mib)

	pvs[0].load(pvs[0].failing())
	faulted := true
	t.Cleanup(func() {
		if faulted {
			pvs[0].load(pvs[0].linear())
		}
	})

	// The held handle: aligned reads and writes reach the device at once.
	if _, err := held.ReadAt(buf, 0); !isErrno(err, syscall.EIO) {
		t.Errorf("read of a through a handle opened before the fault: %v, want EIO", err)
	}
	if _, err := held.WriteAt(buf, 2*mib); !isErrno(err, syscall.EIO) {
		t.Errorf("write to a through a handle opened before the fault: %v, want EIO", err)
	}
	// New opens, by real clients: dd reports the error and fails.
	if out, err := try("dd", "if="+m.path("a"), "of=/dev/null", "bs=1M", "count=1", "status=none"); err == nil ||
		!strings.Contains(out, "Input/output error") {
		t.Errorf("dd read of a on the failing PV: %v: %s", err, out)
	}
	if out, err := try("dd", "if="+srcB, "of="+m.path("a"), "bs=1M", "count=1", "seek=4", "conv=notrunc,fsync",
		"status=none"); err == nil || !strings.Contains(out, "Input/output error") {
		t.Errorf("dd write to a on the failing PV: %v: %s", err, out)
	}
	// An unaligned write lands in the page cache of the buffered fd; its
	// failure must come back from fsync (write-back error), not be lost.
	if out, err := try("dd", "if="+srcB, "of="+m.path("a"), "bs=1000", "count=3", "seek=7", "conv=notrunc,fsync",
		"status=none"); err == nil {
		t.Errorf("unaligned write + fsync to a on the failing PV succeeded: %s", out)
	}

	// The other PV's file: read, write, fsync, stat, listing.
	if !bytes.Equal(fileBytes(t, m.path("b"), 0, 8*mib), fileBytes(t, srcB, 0, 8*mib)) {
		t.Error("b (on the healthy PV) reads back different bytes during the fault")
	}
	fill(t, srcA, m.path("b"))
	if !bytes.Equal(fileBytes(t, m.path("b"), 0, 8*mib), wantA) {
		t.Error("b (on the healthy PV) did not take a write during the fault")
	}
	if !m.has("a") || !m.has("b") {
		t.Errorf("listing during the fault: %v", m.names())
	}
	if gone(pid) || !mounted(m.dir) {
		t.Fatal("the server died on a failing PV")
	}
	if !m.logHas("failed", "volume=a", "input/output error") {
		t.Errorf("the server log does not name volume a with the I/O error:\n%s", m.logText())
	}

	pvs[0].load(pvs[0].linear())
	faulted = false
	// The same handle and new opens work again, no remount.
	if _, err := held.ReadAt(buf, 0); err != nil {
		t.Errorf("read of a through the held handle after the fault cleared: %v", err)
	} else if !bytes.Equal(buf, wantA[:mib]) {
		t.Error("a's first MiB differs after the fault cleared")
	}
	if _, err := held.WriteAt(wantA[2*mib:3*mib], 2*mib); err != nil {
		t.Errorf("write to a through the held handle after the fault cleared: %v", err)
	}
	if err := held.Sync(); err != nil {
		// The write-back error of the unaligned write was reported to
		// dd's handle; this handle saw the errors of its own calls.
		t.Logf("fsync of the held handle after the fault cleared: %v", err)
	}
	held.Close()
	// Bytes 7000..9999 of a may hold what the failed unaligned write left
	// in the page cache or not; the rest is what was written before.
	got := fileBytes(t, m.path("a"), 0, 8*mib)
	if !bytes.Equal(got[:7000], wantA[:7000]) || !bytes.Equal(got[10000:], wantA[10000:]) {
		t.Error("a's data written before the fault is not intact after it cleared")
	}
	fill(t, srcB, m.path("a"))
	sameDataPrefix(t, m.path("a"), srcB, 8*mib)
	if gone(pid) {
		t.Fatal("the server died")
	}
}

// sameDataPrefix compares the first n bytes of two files.
func sameDataPrefix(t *testing.T, a, b string, n int64) {
	t.Helper()
	if !bytes.Equal(fileBytes(t, a, 0, n), fileBytes(t, b, 0, n)) {
		t.Fatalf("the first %d bytes of %s and %s differ", n, a, b)
	}
}

// lvWhenFull is a thin pool's lv_when_full ("error", "queue" or "").
func (e *env) lvWhenFull(pool string) string {
	e.t.Helper()
	return strings.TrimSpace(sh(e.t, "lvs", "--noheadings", "-o", "lv_when_full", e.vg+"/"+pool))
}

// A thin pool that fills: volfs has set it to fail writes at once
// (--errorwhenfull y), so a write beyond the pool gets ENOSPC within
// seconds instead of hanging 60 s; the other files keep their data; the log
// and `volfs status` say the pool is full; after lvextend of the pool the
// same file takes writes again without a remount.
func TestFaultThinPoolFull(t *testing.T) {
	e := newVG(t)
	// The administrator's pool, with LVM's default policy (queue).
	sh(t, "lvcreate", "-q", "--type", "thin-pool", "-L", "32m", "-n", "pool", e.vg)
	if w := e.lvWhenFull("pool"); w == "error" {
		t.Fatalf("new pool already has errorwhenfull: %q", w)
	}
	m := e.mount("--thin-pool", "pool")
	if w := e.lvWhenFull("pool"); w != "error" {
		t.Fatalf("pool's lv_when_full after mount: %q, want error", w)
	}
	if !m.logHas("fail writes at once when full", "pool="+e.vg+"/pool") {
		t.Errorf("the mount did not log the change of the pool's policy:\n%s", m.logText())
	}
	keep := e.file("keep", 8*mib, 3)
	sh(t, "cp", keep, m.path("keep"))
	src := e.file("big", 48*mib, 4)
	sh(t, "truncate", "-s", "64M", m.path("big"))

	start := time.Now()
	out, err := try("dd", "if="+src, "of="+m.path("big"), "bs=1M", "conv=notrunc,fsync", "status=none")
	took := time.Since(start)
	t.Logf("dd of 48 MiB into a 32 MiB pool: %v after %v: %s", err, took.Round(time.Millisecond), out)
	if err == nil || !strings.Contains(out, "No space left on device") {
		t.Fatalf("dd beyond the pool: %v: %s, want ENOSPC", err, out)
	}
	// dm-thin's queue mode would hold the write 60 s.
	if took > 45*time.Second {
		t.Errorf("ENOSPC came after %v: writes were queued, not failed", took)
	}
	if gone(m.serverPid()) {
		t.Fatal("the server died on a full pool")
	}
	sameData(t, m.path("keep"), keep)
	waitFor(t, "log names the full pool", 30*time.Second, func() bool {
		return m.logHas("thin pool "+e.vg+"/pool is full", "volume=big", "data_percent=100")
	})
	st, err := exec.Command(volfsBin, "status", m.dir).CombinedOutput()
	if !strings.Contains(string(st), "thin pool "+e.vg+"/pool data is 100.0% full") {
		t.Errorf("volfs status on a full pool (%v):\n%s", err, st)
	}

	sh(t, "lvextend", "-q", "-L", "+32m", e.vg+"/pool")
	if out, err := try("dd", "if="+src, "of="+m.path("big"), "bs=1M", "conv=notrunc,fsync", "status=none"); err != nil {
		t.Fatalf("dd after lvextend of the pool: %v: %s", err, out)
	}
	sameDataPrefix(t, m.path("big"), src, 48*mib)
	sameData(t, m.path("keep"), keep)
}

// A slow PV (dm-delay, seconds per I/O on one file's PV): the writes to it
// succeed, late; meanwhile stat, a listing and reads of the files on the
// other PV are not held behind them; `volfs umount` ends in bounded time
// while the PV is still slow.
func TestFaultSlowPV(t *testing.T) {
	if out, err := try("modprobe", "dm-delay"); err != nil {
		t.Skipf("dm-delay: %v: %s", err, out)
	}
	const delayMs = 8000
	e, pvs := newFaultVG(t, 2, 256*mib)
	sh(t, "lvcreate", "-q", "-L", "16m", "-n", "slow", e.vg, pvs[0].path())
	sh(t, "lvcreate", "-q", "-L", "16m", "-n", "fast", e.vg, pvs[1].path())
	// A listing of the VG is kept 30 s: what is measured is volfs and the
	// kernel against the slow PV, not lvs (a second or more in the guest).
	m := e.mount("--cache-ttl", "30s")
	srcS, srcF := e.file("S", 4*mib, 5), e.file("F", 4*mib, 6)
	fill(t, srcS, m.path("slow"))
	fill(t, srcF, m.path("fast"))

	s := time.Now()
	_, _ = os.ReadDir(m.dir)
	_, _ = os.Stat(m.path("fast"))
	t.Logf("readdir + stat before the delay: %v", time.Since(s).Round(time.Millisecond))

	pvs[0].load(pvs[0].slow(delayMs))
	slowed := true
	t.Cleanup(func() {
		if slowed {
			pvs[0].load(pvs[0].linear())
		}
	})
	// Two 1 MiB direct writes and a flush: at least 3 delays. fdatasync,
	// not fsync: no lvchange of the file's mtime (whose new listing every
	// lookup would wait for) until dd closes the file.
	writer := exec.Command("dd", "if="+srcS, "of="+m.path("slow"), "bs=1M", "count=2", "oflag=direct",
		"conv=notrunc,fdatasync", "status=none")
	var wout bytes.Buffer
	writer.Stdout, writer.Stderr = &wout, &wout
	start := time.Now()
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- writer.Wait() }()
	t.Cleanup(func() {
		_ = writer.Process.Kill()
		<-done
		done <- nil
	})
	waitFor(t, "dd has the slow file open", 10*time.Second, func() bool {
		fd, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/1", writer.Process.Pid))
		return err == nil && fd == m.path("slow") || wout.Len() > 0
	})
	// Under TCG an lvs takes a second (several on a loaded host) and FUSE
	// round trips tens of ms; a call held behind the slow PV takes a
	// delay (8 s) or more.
	const bound = delayMs / 2 * time.Millisecond
	timed := func(what string, f func() error) {
		t.Helper()
		s := time.Now()
		err := f()
		took := time.Since(s)
		t.Logf("%s during slow I/O: %v (%v)", what, took.Round(time.Millisecond), err)
		if err != nil {
			t.Errorf("%s during slow I/O: %v", what, err)
		}
		if took > bound {
			t.Errorf("%s took %v behind the slow PV (bound %v)", what, took, bound)
		}
	}
	// Rounds of checks 2 s apart (the kernel's attribute and entry
	// caches last 1 s: each round asks the server), until the writer ends.
	checks := 0
	for running := true; running && checks < 8; {
		if checks > 0 {
			select {
			case err := <-done:
				done <- err
				running = false
				continue
			case <-time.After(2 * time.Second):
			}
		}
		checks++
		timed("stat fast", func() error { _, err := os.Stat(m.path("fast")); return err })
		timed("stat slow", func() error { _, err := os.Stat(m.path("slow")); return err })
		timed("readdir", func() error { _, err := os.ReadDir(m.dir); return err })
		timed("read 1 MiB of fast", func() error {
			f, err := os.Open(m.path("fast"))
			if err != nil {
				return err
			}
			defer f.Close()
			b := make([]byte, mib)
			if _, err := f.ReadAt(b, mib); err != nil {
				return err
			}
			if !bytes.Equal(b, fileBytes(t, srcF, mib, mib)) {
				return errors.New("wrong bytes")
			}
			return nil
		})
	}
	err := <-done
	done <- err
	took := time.Since(start)
	t.Logf("slow writer: %v after %v (%d rounds of checks while it ran)", err, took.Round(time.Millisecond), checks)
	if err != nil {
		t.Fatalf("writes to the slow PV failed: %v: %s", err, wout.String())
	}
	if checks == 0 {
		t.Error("the slow writer ended before any check ran: the delay did not apply")
	}
	if took < 2*delayMs*time.Millisecond {
		t.Errorf("the slow writer took %v: the delay did not apply", took)
	}
	if strings.Contains(m.logText(), "level=WARN") && m.logHas("failed", "volume=slow") {
		t.Errorf("the server logged an error for the slow volume:\n%s", m.logText())
	}
	// Unmount while the PV is still slow: bounded (the server flushes and
	// records the times of the slow file on its way out).
	s = time.Now()
	m.umount()
	t.Logf("volfs umount with a slow PV: %v", time.Since(s).Round(time.Millisecond))
	if time.Since(s) > 90*time.Second {
		t.Errorf("volfs umount took %v with a slow PV", time.Since(s))
	}
	pvs[0].load(pvs[0].linear())
	slowed = false
	m.start()
	sameDataPrefix(t, m.path("slow"), srcS, 2*mib)
	sameDataPrefix(t, m.path("fast"), srcF, 4*mib)
}
