package lvm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lvm2 commands of another tool racing volfs: while an admin's loop
// creates, tags, renames, extends and removes LVs of the same VG (and adds
// and drops a tag of its own on a file volfs serves), files are copied,
// renamed, verified and removed through the mount. No command of either
// side fails, no byte is wrong, the server stays up, the admin's tag
// survives volfs's own tag writes, and the listing ends up showing exactly
// what is there.
func TestFaultExternalLVM(t *testing.T) {
	rounds := faultIterations(t, 1)
	e := newVG(t)
	m := e.mount()
	keep := e.file("keep", 2*mib+5, 21)
	sh(t, "cp", keep, m.path("keep"))
	pid := m.serverPid()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var extErr []string
	extRounds := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			a, b := fmt.Sprintf("ext%d", k), fmt.Sprintf("ext%dr", k)
			steps := [][]string{
				{"lvcreate", "-q", "-Wy", "-Zy", "-L", "4m", "-n", a, e.vg},
				{"lvchange", "-q", "--addtag", "admin.note=x" + a, e.vg + "/" + a},
				{"lvchange", "-q", "--addtag", "admin.backup=yes", e.vg + "/keep"},
				{"lvrename", "-q", e.vg, a, b},
				{"lvextend", "-q", "-L", "+4m", e.vg + "/" + b},
				{"lvchange", "-q", "--deltag", "admin.backup=yes", e.vg + "/keep"},
				{"lvremove", "-q", "-f", e.vg + "/" + b},
			}
			for _, s := range steps {
				if out, err := try(s[0], s[1:]...); err != nil {
					extErr = append(extErr, fmt.Sprintf("%s: %v: %s", strings.Join(s, " "), err, out))
				}
			}
			extRounds++
		}
	}()

	srcs := []string{e.file("s0", 3*mib+333, 22), e.file("s1", mib, 23), e.file("s2", 5*mib+1, 24)}
	for i := range rounds {
		for j, src := range srcs {
			c, d := fmt.Sprintf("c%d_%d", i, j), fmt.Sprintf("d%d_%d", i, j)
			sh(t, "cp", src, m.path(c))
			sameData(t, m.path(c), src)
			sh(t, "mv", m.path(c), m.path(d))
			sameData(t, m.path(d), src)
			sh(t, "truncate", "-s", "+1M", m.path(d))
			sameDataPrefix(t, m.path(d), src, size(t, src))
		}
		for j := range srcs {
			sh(t, "rm", m.path(fmt.Sprintf("d%d_%d", i, j)))
		}
		sameData(t, m.path("keep"), keep)
		sh(t, "touch", m.path("keep")) // a tag write of volfs's own
	}
	close(stop)
	wg.Wait()
	t.Logf("%d rounds of the admin's lvm loop ran alongside", extRounds)
	for _, s := range extErr {
		t.Errorf("the admin's command failed: %s", s)
	}
	if gone(pid) {
		t.Fatal("the server died")
	}
	sameData(t, m.path("keep"), keep)
	waitFor(t, "the listing shows only keep", 2*externalDelay, func() bool {
		return slices.Equal(m.names(), []string{"keep"})
	})
	if got := e.files(); !slices.Equal(got, []string{"keep"}) {
		t.Fatalf("LVs left: %v", got)
	}
	if l := e.lv("keep"); l.hasTag("admin.backup=yes") {
		t.Errorf("keep still has the admin's tag the admin removed: %v", l.Tags)
	}
	// The admin's tag and volfs's own tags coexist.
	sh(t, "lvchange", "-q", "--addtag", "admin.backup=yes", e.vg+"/keep")
	sh(t, "touch", "-d", "2020-01-02", m.path("keep"))
	m.remount()
	l := e.lv("keep")
	if !l.hasTag("admin.backup=yes") {
		t.Errorf("volfs's tag writes dropped the admin's tag: %v", l.Tags)
	}
	if st := size(t, m.path("keep")); st != size(t, keep) {
		t.Errorf("keep: size %d", st)
	}
}

// TestFaultVGLockHeld is another tool holding the VG's lock for seconds
// (an lvm command that waits on a slow disk, or a backup script's flock):
// volfs's lvm commands wait for it (no error, no retry storm), and what
// needs no lvm command goes on meanwhile: reads and writes of an open
// file, stat and listing of existing files.
func TestFaultVGLockHeld(t *testing.T) {
	const hold = 8 * time.Second
	e := newVG(t)
	m := e.mount()
	a := e.file("a", 3*mib+17, 31)
	b := e.file("b", 2*mib+5, 32)
	sh(t, "cp", a, m.path("a"))
	f, err := os.OpenFile(m.path("a"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// lvm's file lock of the VG (locking_dir /run/lock/lvm, V_<VG>),
	// held exclusively as an lvm command that changes the VG holds it.
	lockFile := "/run/lock/lvm/V_" + e.vg
	holder := exec.Command("flock", "-x", lockFile, "sleep", strconv.Itoa(int(hold/time.Second)))
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	held := time.Now()
	waitFor(t, "the VG lock is held", 5*time.Second, func() bool {
		return exec.Command("flock", "-n", "-s", lockFile, "true").Run() != nil
	})

	// A create needs lvcreate: it waits for the lock, then succeeds.
	cp := exec.Command("cp", b, m.path("b"))
	var cpOut bytes.Buffer
	cp.Stdout, cp.Stderr = &cpOut, &cpOut
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	cpDone := make(chan error, 1)
	go func() { cpDone <- cp.Wait() }()
	// Meanwhile the open file reads and writes, and stat and ls answer,
	// all before the lock is released.
	buf := make([]byte, 64*kib)
	want := pseudoRandom(64*kib, 33)
	if _, err := f.WriteAt(want, mib); err != nil {
		t.Errorf("write while the VG lock is held: %v", err)
	}
	if _, err := f.ReadAt(buf, mib); err != nil || !bytes.Equal(buf, want) {
		t.Errorf("read while the VG lock is held: %v (same bytes: %v)", err, bytes.Equal(buf, want))
	}
	if _, err := os.Stat(m.path("a")); err != nil {
		t.Errorf("stat while the VG lock is held: %v", err)
	}
	if !m.has("a") {
		t.Error("ls while the VG lock is held does not list a")
	}
	if el := time.Since(held); el < hold-time.Second {
		select {
		case err := <-cpDone:
			t.Fatalf("cp ended (%v) while the VG lock was held: is %s lvm's lock?", err, lockFile)
		default:
		}
	} else {
		t.Logf("the checks took %v, past the %v the lock was held (slow guest): they may not have overlapped it", el, hold)
	}
	if err := holder.Wait(); err != nil {
		t.Fatalf("flock: %v", err)
	}
	if err := <-cpDone; err != nil {
		t.Fatalf("cp while the VG lock was held: %v: %s", err, cpOut.String())
	}
	t.Logf("cp waited for the lock and took %v", time.Since(held).Round(time.Millisecond))
	sameData(t, m.path("b"), b)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if lt := m.logText(); strings.Contains(lt, "level=ERROR") || strings.Contains(lt, "retrying") {
		t.Errorf("the server logged errors or retries:\n%s", lt)
	}
}
