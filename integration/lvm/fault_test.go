package lvm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// flakey is a disk that works for up seconds, then fails for down seconds,
// over and over (dm-flakey, counted from the table's load). Without
// features every read and write of a down period fails; "error_writes"
// fails only the writes. The first MiB (PV label and LVM metadata) stays
// reliable, as in slow: the fault is the data's, not lvm's.
func (d *dmDev) flakey(up, down int, features ...string) string {
	const meta = 2048
	t := fmt.Sprintf("0 %d linear %s %d\n%d %d flakey %s %d %d %d",
		meta, d.disk, d.start, meta, d.sectors-meta, d.disk, d.start+meta, up, down)
	if len(features) > 0 {
		t += fmt.Sprintf(" %d %s", len(features), strings.Join(features, " "))
	}
	return t
}

// A PV that fails intermittently (dm-flakey, 1 s up, 1 s down; first every
// I/O of a down period fails, then only writes): a client writes 256 KiB
// blocks of a file on it with fsync after each, through one handle, and
// reads others back. Every failure is EIO; a read never returns other
// bytes than the last acknowledged write; every block whose write and
// fsync succeeded is on the LV (read past every cache) when the PV is
// healthy again. The file on the other PV takes the same load with no
// error, the server stays up, the log names the volume, and after the
// linear table is back the same handle and new opens work, no remount.
// (dm-flakey's drop_writes, a disk that acknowledges writes it drops, is
// not tested: no layer above the disk can tell.)
func TestFaultFlakeyPV(t *testing.T) {
	if out, err := try("modprobe", "dm-flakey"); err != nil {
		t.Skipf("dm-flakey: %v: %s", err, out)
	}
	const blocks, bs = 8, 256 * kib
	e, pvs := newFaultVG(t, 2, 256*mib)
	sh(t, "lvcreate", "-q", "-L", "16m", "-n", "a", e.vg, pvs[0].path())
	sh(t, "lvcreate", "-q", "-L", "16m", "-n", "b", e.vg, pvs[1].path())
	m := e.mount()
	pid := m.serverPid()
	block := func(seed int) []byte { return pseudoRandom(bs, byte(seed)) }
	// want[i] is block i's acknowledged bytes; nil after a failed write
	// or fsync (old, new or a mix of both).
	want := make([][]byte, blocks)
	open := func(name string) *os.File {
		f, err := os.OpenFile(m.path(name), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	a, b := open("a"), open("b")
	for i := range blocks {
		want[i] = block(i)
		if _, err := a.WriteAt(want[i], int64(i)*bs); err != nil {
			t.Fatal(err)
		}
		if _, err := b.WriteAt(want[i], int64(i)*bs); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	wantB := slices.Clone(want)

	faulted := false
	t.Cleanup(func() {
		if faulted {
			pvs[0].load(pvs[0].linear())
		}
	})
	seed := blocks
	for _, phase := range []struct {
		features  []string
		readsFail bool
	}{{nil, true}, {[]string{"error_writes"}, false}} {
		pvs[0].load(pvs[0].flakey(1, 1, phase.features...))
		faulted = true
		var okW, eioW, okR, eioR int
		// Until each outcome came (and at least 8 rounds), at most a
		// minute: a round takes from a fraction of a second to seconds
		// under TCG on a loaded host.
		start, rounds := time.Now(), 0
		var slowest [3]time.Duration // a's write+fsync, the round up to a's read, a's read
		for ; rounds < 8 || !(okW > 0 && eioW > 0 && (eioR > 0 || !phase.readsFail)); rounds, seed = rounds+1, seed+1 {
			if time.Since(start) > time.Minute {
				break
			}
			i := seed % blocks
			data := block(seed)
			s := time.Now()
			_, err := a.WriteAt(data, int64(i)*bs)
			if err == nil {
				err = a.Sync()
			}
			slowest[0] = max(slowest[0], time.Since(s))
			switch {
			case err == nil:
				want[i] = data
				okW++
			case isErrno(err, syscall.EIO):
				want[i] = nil
				eioW++
			default:
				t.Fatalf("write of block %d of a on the flakey PV: %v, want EIO or success", i, err)
			}
			// The file on the healthy PV: no error, right bytes.
			if _, err := b.WriteAt(data, int64(i)*bs); err != nil {
				t.Fatalf("write to b (healthy PV) while a's PV is flakey: %v", err)
			}
			if err := b.Sync(); err != nil {
				t.Fatalf("fsync of b (healthy PV) while a's PV is flakey: %v", err)
			}
			wantB[i] = data
			j := (seed + blocks/2) % blocks
			got := make([]byte, bs)
			if _, err := b.ReadAt(got, int64(j)*bs); err != nil || !bytes.Equal(got, wantB[j]) {
				t.Fatalf("read of block %d of b (healthy PV) while a's PV is flakey: %v (bytes equal: %v)",
					j, err, bytes.Equal(got, wantB[j]))
			}
			slowest[1] = max(slowest[1], time.Since(s))
			s = time.Now()
			_, err = a.ReadAt(got, int64(j)*bs)
			slowest[2] = max(slowest[2], time.Since(s))
			switch {
			case err == nil:
				okR++
				if want[j] != nil && !bytes.Equal(got, want[j]) {
					t.Fatalf("read of block %d of a on the flakey PV succeeded with other bytes than its acknowledged write", j)
				}
			case isErrno(err, syscall.EIO):
				eioR++
				if !phase.readsFail {
					t.Errorf("read of block %d of a failed with only writes failing (%v)", j, phase.features)
				}
			default:
				t.Fatalf("read of block %d of a on the flakey PV: %v, want EIO or success", j, err)
			}
		}
		t.Logf("flakey %v: %d rounds in %v: writes+fsync %d ok, %d EIO; reads %d ok, %d EIO; slowest %v", phase.features,
			rounds, time.Since(start).Round(time.Millisecond), okW, eioW, okR, eioR, slowest)
		if okW == 0 || eioW == 0 || phase.readsFail && eioR == 0 {
			t.Errorf("flakey %v: the fault did not come and go (writes %d ok, %d EIO; reads %d EIO)",
				phase.features, okW, eioW, eioR)
		}
		pvs[0].load(pvs[0].linear())
		faulted = false
		// Every acknowledged block is on the LV, past the caches.
		dev := filepath.Join(e.base, "a.dev")
		sh(t, "dd", "if="+e.devPath("a"), "of="+dev, "bs="+strconv.Itoa(bs), "count="+strconv.Itoa(blocks), "iflag=direct", "status=none")
		onDisk := fileBytes(t, dev, 0, blocks*bs)
		for i, w := range want {
			if w != nil && !bytes.Equal(onDisk[i*bs:(i+1)*bs], w) {
				t.Errorf("flakey %v: block %d of a was written and fsynced without error, but the LV holds other bytes",
					phase.features, i)
			}
		}
	}
	if gone(pid) || !mounted(m.dir) {
		t.Fatal("the server died on a flakey PV")
	}
	if !m.logHas("failed", "volume=a", "input/output error") {
		t.Errorf("the server log does not name volume a with the I/O error:\n%s", m.logText())
	}
	if m.logHas("failed", "volume=b") {
		t.Errorf("the server logged an error for b, on the healthy PV:\n%s", m.logText())
	}
	// Healthy again: the same handle, then a new open, no remount.
	for i := range blocks {
		want[i] = block(seed + i)
		if _, err := a.WriteAt(want[i], int64(i)*bs); err != nil {
			t.Fatalf("write of block %d of a through the held handle after the fault: %v", i, err)
		}
	}
	if err := a.Sync(); err != nil {
		// A write-back error of the fault may come back once more.
		t.Logf("first fsync of the held handle after the fault: %v", err)
		if err := a.Sync(); err != nil {
			t.Errorf("fsync of the held handle after the fault: %v", err)
		}
	}
	got := fileBytes(t, m.path("a"), 0, blocks*bs)
	for i := range blocks {
		if !bytes.Equal(got[i*bs:(i+1)*bs], want[i]) {
			t.Errorf("block %d of a (new open) after the fault is not what the held handle wrote", i)
		}
	}
	if !bytes.Equal(fileBytes(t, m.path("b"), 0, blocks*bs), bytes.Join(wantB, nil)) {
		t.Error("b (healthy PV) does not hold its acknowledged writes")
	}
	if gone(pid) {
		t.Fatal("the server died")
	}
}

// poolHealth is a thin pool's metadata fill, lv_health_status ("" when
// healthy, "metadata_read_only", "out_of_data", "failed") and
// lv_check_needed.
func (e *env) poolHealth(pool string) (meta, health, check string) {
	e.t.Helper()
	out := sh(e.t, "lvs", "--noheadings", "--separator", ";", "-o", "metadata_percent,lv_health_status,lv_check_needed",
		e.vg+"/"+pool)
	f := strings.Split(strings.TrimSpace(out), ";")
	if len(f) != 3 {
		e.t.Fatalf("lvs of %s/%s: %q", e.vg, pool, out)
	}
	return strings.TrimSpace(f[0]), f[1], f[2]
}

// poolMetaFree is how many metadata blocks the thin pool can still
// allocate before it stops (dm status: used/total, used counting
// dm-thin's reserve).
func (e *env) poolMetaFree(pool string) int {
	e.t.Helper()
	out := sh(e.t, "dmsetup", "status", e.vg+"-"+pool+"-tpool")
	f := strings.Fields(out)
	var used, total int
	if len(f) < 5 || f[2] != "thin-pool" {
		e.t.Fatalf("dmsetup status of %s/%s: %q", e.vg, pool, out)
	}
	if _, err := fmt.Sscanf(f[4], "%d/%d", &used, &total); err != nil {
		e.t.Fatalf("dmsetup status of %s/%s: %q: %v", e.vg, pool, out, err)
	}
	return total - used
}

// A thin pool whose metadata fills (LVM's smallest metadata LV, 2 MiB,
// and snapshots of an image being written: the common way there): dm-thin
// stops allocating at once (out-of-metadata-space mode, which the pool's
// when-full policy does not change), so the write that needs a new block
// fails with EIO within seconds, not queued, while writes to blocks an
// image owns still work. The other thin image, a linear image and the
// bytes written before are intact; the log and
// `volfs status` say the pool's metadata is full and what to do; after
// `lvextend --poolmetadatasize` the same handle writes again, no remount.
func TestFaultThinMetadataFull(t *testing.T) {
	e := newVG(t)
	t0 := time.Now()
	// 1 MiB extents: the metadata LV is 2 MiB, 512 blocks of 4 KiB, of
	// which dm-thin keeps 10% in reserve.
	sh(t, "vgchange", "-q", "-s", "1m", e.vg)
	sh(t, "lvcreate", "-q", "--type", "thin-pool", "-L", "1280m", "--poolmetadatasize", "2m", "-c", "64k", "-Zn",
		"-n", "pool", e.vg)
	sh(t, "lvcreate", "-q", "-V", "2g", "-T", e.vg+"/pool", "-n", "img")
	sh(t, "lvcreate", "-q", "-L", "4m", "-n", "lin", e.vg)
	// 16384 chunks of img mapped from 64 MiB on, 4 KiB each (-Zn: the
	// rest is not zeroed): about 66 leaves of img's mapping tree (a leaf
	// holds at most 254 mappings).
	const base, chunk, chunks, leaf = 64 * mib, 64 * kib, 16384, 256 * 64 * kib
	sh(t, "fio", "--name=prefill", "--filename="+e.devPath("img"), "--offset="+strconv.Itoa(base),
		"--size="+strconv.Itoa(chunks*chunk), "--rw=write:60k", "--bs=4k", "--direct=1", "--ioengine=libaio",
		"--iodepth=32", "--output-format=terse")
	meta, _, _ := e.poolHealth("pool")
	t.Logf("%v: metadata after mapping %d chunks: %s%%", time.Since(t0).Round(time.Second), chunks, meta)

	m := e.mount("--thin-pool", "pool")
	t.Logf("%v: mounted", time.Since(t0).Round(time.Second))
	keep, lin, first := e.file("keep", 4*mib, 7), e.file("lin", 4*mib, 8), e.file("first", 4*mib, 9)
	sh(t, "cp", keep, m.path("keep"))
	t.Logf("%v: keep copied", time.Since(t0).Round(time.Second))
	fill(t, lin, m.path("lin"))
	fill(t, first, m.path("img"))
	// Snapshots of img (an administrator's backups), taken while LVM
	// still creates thin volumes (it refuses above 75% metadata), then
	// one 64 KiB write per leaf into one snapshot after the other: each
	// write makes the snapshot copy a leaf, one metadata block (and the
	// shared blocks' reference counts grow), until about 40 blocks are
	// left. Direct writes to the LVs: other tools' images in the pool.
	const snaps = 8
	t.Logf("%v: mounted, files written", time.Since(t0).Round(time.Second))
	for i := range snaps {
		sh(t, "lvcreate", "-q", "-s", "-kn", "-n", fmt.Sprintf("snap%d", i), e.vg+"/img")
	}
	t.Logf("%v: %d snapshots", time.Since(t0).Round(time.Second), snaps)
	free, written := e.poolMetaFree("pool"), 0
	for ; free > 40 && written < snaps-2; written++ {
		n := min(chunks*chunk/leaf, (free-24)/2)
		sh(t, "fio", "--name=fill", "--filename="+e.devPath(fmt.Sprintf("snap%d", written)), "--offset="+strconv.Itoa(base),
			"--size="+strconv.Itoa(chunks*chunk), "--rw=write:"+strconv.Itoa(leaf-chunk), "--bs="+strconv.Itoa(chunk),
			"--number_ios="+strconv.Itoa(n), "--direct=1", "--ioengine=libaio", "--iodepth=16", "--output-format=terse")
		free = e.poolMetaFree("pool")
		t.Logf("%v: %d writes to snap%d: %d metadata blocks free", time.Since(t0).Round(time.Second), n, written, free)
	}
	if free > 40 {
		t.Fatalf("setup: %d metadata blocks free after writes to %d snapshots", free, written)
	}

	// Through volfs: a 64 KiB write per leaf of img, at chunks shared with
	// the snapshots (each needs a new block and a copy of img's leaf),
	// fsync every 8 writes, until one fails.
	img, err := os.OpenFile(m.path("img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	buf := pseudoRandom(chunk, 10)
	var failed error
	var took time.Duration
	writes := 0
	for off := int64(base + chunk); off < base+chunks*chunk && failed == nil; off += leaf {
		s := time.Now()
		_, err := img.WriteAt(buf, off)
		if err == nil && writes%8 == 7 {
			err = img.Sync()
		}
		writes++
		failed, took = err, time.Since(s)
	}
	if failed == nil {
		failed = img.Sync()
	}
	meta, health, check := e.poolHealth("pool")
	t.Logf("%v: after %d writes through volfs: %v after %v; metadata %s%%, health %q, check needed %q",
		time.Since(t0).Round(time.Second), writes, failed, took.Round(time.Millisecond), meta, health, check)
	if !isErrno(failed, syscall.EIO) {
		t.Fatalf("writes to a pool whose metadata is full: %v, want EIO", failed)
	}
	if took > 45*time.Second {
		t.Errorf("the write failed after %v: queued, not failed", took)
	}
	if health != "metadata_read_only" {
		t.Errorf("pool health %q, want metadata_read_only", health)
	}
	if gone(m.serverPid()) {
		t.Fatal("the server died on a pool with full metadata")
	}
	// Reads work; the bytes written before are intact.
	sameData(t, m.path("keep"), keep)
	sameData(t, m.path("lin"), lin)
	sameDataPrefix(t, m.path("img"), first, 4*mib)
	// A linear image is not in the pool: it takes writes.
	fill(t, keep, m.path("lin"))
	sameData(t, m.path("lin"), keep)
	// A thin image writing blocks it owns needs no new block: writes and
	// fsync work.
	if kf, err := os.OpenFile(m.path("keep"), os.O_RDWR, 0); err != nil {
		t.Error(err)
	} else {
		_, werr := kf.WriteAt(fileBytes(t, keep, 0, chunk), 0)
		serr := kf.Sync()
		kf.Close()
		if werr != nil || serr != nil {
			t.Errorf("rewrite of an allocated block of keep with the pool's metadata full: write %v, fsync %v", werr, serr)
		}
	}
	waitFor(t, "log says the pool's metadata is full", 30*time.Second, func() bool {
		return m.logHas("thin pool "+e.vg+"/pool metadata is full", "volume=img", "metadata_percent=100")
	})
	st, err := exec.Command(volfsBin, "status", m.dir).CombinedOutput()
	t.Logf("volfs status:\n%s", st)
	if !strings.Contains(string(st), "thin pool "+e.vg+"/pool metadata is full") ||
		!strings.Contains(string(st), "lvextend --poolmetadatasize") {
		t.Errorf("volfs status on a pool with full metadata (%v):\n%s", err, st)
	}

	// Online recovery: more metadata space, and the pool allocates again.
	sh(t, "lvextend", "-q", "--poolmetadatasize", "+4m", e.vg+"/pool")
	meta, health, check = e.poolHealth("pool")
	t.Logf("%v: after lvextend --poolmetadatasize +4m: metadata %s%%, health %q, check needed %q",
		time.Since(t0).Round(time.Second), meta, health, check)
	for off := int64(base + 2*chunk); off < base+chunks*chunk; off += leaf {
		if _, err := img.WriteAt(buf, off); err != nil {
			t.Fatalf("write to img through the held handle after lvextend --poolmetadatasize: %v", err)
		}
	}
	if err := img.Sync(); err != nil {
		// The failure before may come back once to this handle.
		t.Logf("first fsync after lvextend --poolmetadatasize: %v", err)
		if err := img.Sync(); err != nil {
			t.Errorf("fsync of img after lvextend --poolmetadatasize: %v", err)
		}
	}
	if got := fileBytes(t, m.path("img"), base+2*chunk, chunk); !bytes.Equal(got, buf) {
		t.Error("img does not read back the write made after lvextend --poolmetadatasize")
	}
	fill(t, lin, m.path("keep"))
	sameData(t, m.path("keep"), lin)
	sameDataPrefix(t, m.path("img"), first, 4*mib)
}
