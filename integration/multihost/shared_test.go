package multihost

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	mib = 1 << 20
	// vg is the shared VG both hosts mount.
	vg = "volfsmh"
	// fileSize is the size of the file host 1 writes and host 2 reads.
	fileSize = 8 * mib
	// Under TCG on a busy 2-core machine everything is slow: vgcreate
	// --shared takes about half a minute and --lock-start as long, after
	// each guest's own boot. Waits are long; they end at once when the
	// other host reports a failure.
	longWait = 15 * time.Minute
	// quick bounds what must not wait for a lock: a refusal with EBUSY.
	quick = time.Minute
)

// TestSharedVG is the basic two-host scenario; each guest plays its host's
// part (VOLFS_HOST_ID), the two meeting at named steps:
//
//  1. both mount the shared VG (made by the first test of the run,
//     ensureVG); host 2's first mount started its lockspace;
//  2. a file written on host 1 is listed on host 2 with its size;
//  3. while host 1 has it open, host 2's open, rm, truncate and mv fail at
//     once with EBUSY, and host 2's log names host 1;
//  4. once host 1 closes it, host 2 opens it and reads host 1's data, then
//     removes it, and host 1's listing loses it;
//  5. thin pool on the shared VG: while host 1 has one thin file open, host
//     2 cannot open another thin file of the same pool (one lock for the
//     pool and all its thin LVs: EBUSY naming the pool and host 1), nor
//     truncate, mv, rm or snapshot it; once host 1 closes it, host 2 can.
func TestSharedVG(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	onHosts(t, host1, host2)
}

// onHosts runs host 1's or host 2's part of a test, by this guest's host
// id; a failure ends the other host's part too (sync.Fail).
func onHosts(t *testing.T, host1, host2 func(*testing.T)) {
	t.Cleanup(func() {
		if t.Failed() {
			sync.Fail(t.Name() + " failed on this host")
		}
	})
	if hostID == 1 {
		host1(t)
	} else {
		host2(t)
	}
}

func host1(t *testing.T) {
	ensureVG(t)
	m := mountVG(t)
	m.logHas(t, "shared VG", "host_id=1")

	// 2. a file for host 2
	data := pattern(fileSize, 1)
	if err := os.WriteFile(m.path("img1"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	signal(t, "img1-written")

	// 3. held here while host 2 tries
	f, err := os.OpenFile(m.path("img1"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !active(t, "img1") {
		t.Errorf("img1 is open but its LV is not active on this host")
	}
	signal(t, "img1-held")
	wait(t, "h2-busy-checked", longWait)

	// 4. the last close gives the lock back
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "img1's LV inactive after the last close", quick, func() bool { return !active(t, "img1") })
	signal(t, "img1-closed")
	wait(t, "h2-removed-img1", longWait)
	waitFor(t, "img1 gone from this host's listing", quick, func() bool { return !slices.Contains(m.names(t), "img1") })

	// 5. thin pool: one lock for the pool and its thin LVs
	timed(t, "lvcreate", "-y", "--type", "thin-pool", "-L", "256M", "-n", "pool", vg)
	timed(t, "lvcreate", "-y", "-V", "64M", "--thinpool", "pool", "-n", "thinA", vg)
	timed(t, "lvcreate", "-y", "-V", "64M", "--thinpool", "pool", "-n", "thinB", vg)
	// lvcreate left them active here; volfs activates on open.
	timed(t, "lvchange", "-an", vg+"/thinA", vg+"/thinB", vg+"/pool")
	waitFor(t, "thinA listed", quick, func() bool { return slices.Contains(m.names(t), "thinA") })
	fa, err := os.OpenFile(m.path("thinA"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	signal(t, "thin-held")
	wait(t, "h2-thin-checked", longWait)
	if err := fa.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "thin pool inactive after the last close of its thin file", quick,
		func() bool { return !active(t, "thinA") && !active(t, "pool") })
	signal(t, "thin-closed")
	wait(t, "h2-thin-done", longWait)
	m.umount(t)
}

func host2(t *testing.T) {
	ensureVG(t)
	start := time.Now()
	m := mountVG(t)
	t.Logf("TIMING mount on host 2 (lockspace start included): %v", time.Since(start).Round(time.Second))
	m.logHas(t, "shared VG", "host_id=2")

	// 2. host 1's file shows up here
	wait(t, "img1-written", longWait)
	waitFor(t, "img1 listed with host 1's size", quick, func() bool {
		st, err := os.Stat(m.path("img1"))
		return slices.Contains(m.names(t), "img1") && err == nil && st.Size() == fileSize
	})

	// 3. refused at once while host 1 has it open
	wait(t, "img1-held", longWait)
	start = time.Now()
	f, err := os.OpenFile(m.path("img1"), os.O_RDWR, 0)
	took := time.Since(start)
	if err == nil {
		f.Close()
		t.Fatalf("opening img1 while host 1 has it open succeeded")
	}
	t.Logf("TIMING open refused after %v: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, syscall.EBUSY) {
		t.Errorf("open of a file open on host 1: %v, want EBUSY", err)
	}
	if took > quick {
		t.Errorf("the refusal took %v: it must not wait for the lock", took)
	}
	m.logHas(t, "host 1")
	if by := m.activeOn(t, "img1"); by != "host 1" {
		t.Errorf("volfs ls on host 2: img1 active on %q, want \"host 1\"", by)
	}
	if err := os.Remove(m.path("img1")); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("rm of a file open on host 1: %v, want EBUSY", err)
	}
	if err := os.Truncate(m.path("img1"), 2*fileSize); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("truncate of a file open on host 1: %v, want EBUSY", err)
	}
	if err := os.Rename(m.path("img1"), m.path("img1-moved")); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("mv of a file open on host 1: %v, want EBUSY", err)
		if err == nil {
			_ = os.Rename(m.path("img1-moved"), m.path("img1"))
		}
	}
	signal(t, "h2-busy-checked")

	// 4. host 1 closed it: it opens here, with host 1's data
	wait(t, "img1-closed", longWait)
	var got []byte
	waitFor(t, "img1 opens on host 2 after host 1's last close", quick, func() bool {
		got, err = os.ReadFile(m.path("img1"))
		return err == nil
	})
	if !bytes.Equal(got, pattern(fileSize, 1)) {
		t.Errorf("img1 read on host 2 (%d bytes) differs from what host 1 wrote (%d bytes)", len(got), fileSize)
	}
	waitFor(t, "img1's LV inactive here after the last close", quick, func() bool { return !active(t, "img1") })
	if err := os.Remove(m.path("img1")); err != nil {
		t.Fatalf("rm img1 on host 2: %v", err)
	}
	signal(t, "h2-removed-img1")

	// 5. thin: another thin file of the same pool is locked too
	wait(t, "thin-held", longWait)
	waitFor(t, "thinB listed", quick, func() bool { return slices.Contains(m.names(t), "thinB") })
	start = time.Now()
	fb, err := os.OpenFile(m.path("thinB"), os.O_RDWR, 0)
	took = time.Since(start)
	if err == nil {
		fb.Close()
		t.Errorf("opening thinB while host 1 has thinA (same pool) open succeeded")
	} else {
		t.Logf("TIMING thin open refused after %v: %v", took.Round(time.Millisecond), err)
		if !errors.Is(err, syscall.EBUSY) {
			t.Errorf("open of a thin file whose pool is active on host 1: %v, want EBUSY", err)
		}
		m.logHas(t, "thin pool pool", "host 1", "give each host a thin pool of its own")
	}
	// Every change of another thin file of the pool is refused too.
	if err := os.Truncate(m.path("thinB"), 128*mib); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("truncate of a thin file whose pool is active on host 1: %v, want EBUSY", err)
	}
	if err := os.Rename(m.path("thinB"), m.path("thinB-moved")); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("mv of a thin file whose pool is active on host 1: %v, want EBUSY", err)
		if err == nil {
			_ = os.Rename(m.path("thinB-moved"), m.path("thinB"))
		}
	}
	if err := os.Remove(m.path("thinB")); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("rm of a thin file whose pool is active on host 1: %v, want EBUSY", err)
	}
	out, err := exec.Command(volfsBin, "snapshot", "create", m.path("thinB"), "s1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "host 1") {
		t.Errorf("volfs snapshot create of a thin file whose pool is active on host 1: %v: %s; want a refusal naming host 1",
			err, out)
	}
	signal(t, "h2-thin-checked")
	wait(t, "thin-closed", longWait)
	waitFor(t, "thinB opens on host 2 once host 1 closed thinA", quick, func() bool {
		fb, err = os.OpenFile(m.path("thinB"), os.O_RDWR, 0)
		return err == nil
	})
	if _, err := fb.WriteAt(pattern(mib, 2), 0); err != nil {
		t.Errorf("write to thinB: %v", err)
	}
	if err := fb.Close(); err != nil {
		t.Errorf("close thinB: %v", err)
	}
	waitFor(t, "thin pool inactive here after the last close", quick,
		func() bool { return !active(t, "thinB") && !active(t, "pool") })

	m.umount(t)
	signal(t, "h2-thin-done")
}

// mount is one volfs server (a separate process) over the shared VG.
type mount struct {
	dir, log string
}

// mountVG mounts the shared VG with the mount options opts.
func mountVG(t *testing.T, opts ...string) *mount {
	t.Helper()
	dir, err := os.MkdirTemp(tmpRoot, "mnt-")
	if err != nil {
		t.Fatal(err)
	}
	m := &mount{dir: dir, log: dir + ".log"}
	timed(t, volfsBin, append(append([]string{"mount", "--vg", vg, "--log-file", m.log}, opts...), dir)...)
	t.Cleanup(func() {
		if mounted(dir) {
			if out, err := exec.Command(volfsBin, "umount", dir).CombinedOutput(); err != nil {
				t.Errorf("volfs umount %s: %v: %s", dir, err, out)
				_ = exec.Command("umount", "-l", dir).Run()
			}
		}
		b, _ := os.ReadFile(m.log)
		t.Logf("server log (host %d):\n%s", hostID, b)
	})
	return m
}

func (m *mount) path(name string) string { return filepath.Join(m.dir, name) }

func (m *mount) umount(t *testing.T) {
	t.Helper()
	timed(t, volfsBin, "umount", m.dir)
}

func (m *mount) names(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// activeOn is what volfs ls --json says about the other host that has the
// file in use.
func (m *mount) activeOn(t *testing.T, name string) string {
	t.Helper()
	var l struct {
		Files []struct {
			Name     string `json:"name"`
			ActiveOn string `json:"active_on"`
		} `json:"files"`
	}
	out := timed(t, volfsBin, "ls", "--json", m.dir)
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("volfs ls --json: %v\n%s", err, out)
	}
	for _, f := range l.Files {
		if f.Name == name {
			return f.ActiveOn
		}
	}
	t.Errorf("volfs ls --json does not list %s:\n%s", name, out)
	return ""
}

// logHas fails unless the server log contains every one of subs.
func (m *mount) logHas(t *testing.T, subs ...string) {
	t.Helper()
	b, _ := os.ReadFile(m.log)
	for _, s := range subs {
		if !strings.Contains(string(b), s) {
			t.Errorf("server log of host %d lacks %q", hostID, s)
		}
	}
}

func mounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// active reports whether the LV is active on this host.
func active(t *testing.T, lv string) bool {
	t.Helper()
	out, err := exec.Command("lvs", "--noheadings", "-o", "lv_active", vg+"/"+lv).CombinedOutput()
	if err != nil {
		t.Fatalf("lvs %s/%s: %v: %s", vg, lv, err, out)
	}
	return strings.Contains(string(out), "active") && !strings.Contains(string(out), "inactive")
}

// timed runs a command, fails the test if it fails, and logs how long it
// took (the TIMING lines are the run's measurements).
func timed(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("TIMING %s %s: %v", filepath.Base(name), strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond))
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func signal(t *testing.T, step string) {
	t.Helper()
	if err := sync.Signal(step); err != nil {
		t.Fatal(err)
	}
	t.Logf("reached %s", step)
}

func wait(t *testing.T, step string, timeout time.Duration) {
	t.Helper()
	took, err := sync.Wait(step, timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("waited %v for %s", took.Round(100*time.Millisecond), step)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not after %v", what, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("TIMING %s after %v", what, time.Since(start).Round(10*time.Millisecond))
}

// pattern is n bytes that depend on their offset and seed.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/4096) ^ byte(i)*7 ^ seed
	}
	return b
}

// lvField is one lvs field of the LV on this host.
func lvField(t *testing.T, lv, field string) string {
	t.Helper()
	out, err := exec.Command("lvs", "--noheadings", "-o", field, vg+"/"+lv).CombinedOutput()
	if err != nil {
		t.Fatalf("lvs -o %s %s/%s: %v: %s", field, vg, lv, err, out)
	}
	return strings.TrimSpace(string(out))
}
