package lvm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hiddenLVs lists the LVs volfs keeps under hidden names (files removed or
// replaced while open, interrupted replaces).
func (e *env) hiddenLVs() []string {
	e.t.Helper()
	var out []string
	for _, n := range e.files() {
		if strings.HasPrefix(n, "+2F") {
			out = append(out, n)
		}
	}
	return out
}

// devPath is the device node of an LV.
func (e *env) devPath(lvName string) string { return filepath.Join("/dev", e.vg, lvName) }

func TestRemove(t *testing.T) {
	e := newVG(t)
	m := e.mount()
	src := e.file("src", 3*mib+1, 1)
	src2 := e.file("src2", 1*mib+7, 2)

	t.Run("held elsewhere", func(t *testing.T) {
		sh(t, "cp", src, m.path("busy"))
		e.wantFileLV("busy", 3*mib+1)
		h := hold(t, e.devPath("busy"), "")
		out, err := try("rm", m.path("busy"))
		if err == nil || !strings.Contains(out, "Device or resource busy") {
			t.Fatalf("rm of a volume open elsewhere: %v: %s", err, out)
		}
		if err := os.Remove(m.path("busy")); !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("unlink: %v, want EBUSY", err)
		}
		if !m.has("busy") {
			t.Fatal("file gone")
		}
		e.lv("busy")
		sameData(t, src, m.path("busy"))
		// The log says who holds it.
		if log := m.logText(); !strings.Contains(log, fmt.Sprintf("held by pid %d (sh)", h.cmd.Process.Pid)) {
			t.Fatalf("the server log does not name the holder:\n%s", log)
		}
		h.release(t)
		sh(t, "rm", m.path("busy"))
		if m.has("busy") || len(e.files()) != 0 {
			t.Fatalf("after rm: files %v, LVs %v", m.names(), e.files())
		}
	})

	t.Run("open in volfs", func(t *testing.T) {
		// volfs's own handles never block a remove: the name goes at once,
		// the holder keeps reading, the LV goes at its last close.
		sh(t, "cp", src, m.path("open"))
		e.wantFileLV("open", 3*mib+1)
		out := filepath.Join(e.base, "open.out")
		h := hold(t, m.path("open"), out)
		sh(t, "rm", m.path("open"))
		if m.has("open") {
			t.Fatal("removed file still listed")
		}
		// As on any file system, the removed file can be opened again
		// through the holder's descriptor.
		reopened := filepath.Join(e.base, "open.reopened")
		sh(t, "sh", "-c", `head -c 1000 "$1" >"$2"`, "sh", fmt.Sprintf("/proc/%d/fd/3", h.cmd.Process.Pid), reopened)
		if string(fileBytes(t, reopened, 0, 1000)) != string(fileBytes(t, src, 0, 1000)) {
			t.Fatal("reopening a removed open file through /proc/PID/fd read the wrong bytes")
		}
		if lvs, _ := e.lvs(); len(e.hiddenLVs()) != 1 || lvs["open"].Name != "" {
			t.Fatalf("LVs while the removed file is open: %v", names(lvs))
		}
		// The name is free for a new file.
		sh(t, "cp", src2, m.path("open"))
		sameData(t, src2, m.path("open"))
		h.release(t)
		sameData(t, src, out)
		waitFor(t, "removed file's LV purged at its last close", 15*time.Second, func() bool {
			return len(e.hiddenLVs()) == 0
		})
		e.wantFileLV("open", 1*mib+7)
		sh(t, "rm", m.path("open"))
	})

	t.Run("open in volfs and elsewhere", func(t *testing.T) {
		sh(t, "cp", src, m.path("both"))
		e.wantFileLV("both", 3*mib+1)
		hold(t, m.path("both"), "")
		h := hold(t, e.devPath("both"), "")
		if err := os.Remove(m.path("both")); !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("unlink of a file open in volfs and elsewhere: %v, want EBUSY", err)
		}
		if !m.has("both") || len(e.hiddenLVs()) != 0 {
			t.Fatalf("after a refused remove: files %v, LVs %v", m.names(), e.files())
		}
		sameData(t, src, m.path("both"))
		h.release(t)
	})

	t.Run("mv over a file open in volfs", func(t *testing.T) {
		sh(t, "cp", src, m.path("old"))
		sh(t, "cp", src2, m.path("new"))
		e.wantFileLV("old", 3*mib+1)
		newUUID := e.wantFileLV("new", 1*mib+7).UUID
		out := filepath.Join(e.base, "old.out")
		h := hold(t, m.path("old"), out)
		sh(t, "mv", m.path("new"), m.path("old"))
		if m.has("new") || size(t, m.path("old")) != 1*mib+7 {
			t.Fatalf("after mv: %v", m.names())
		}
		sameData(t, src2, m.path("old"))
		if l := e.lv("old"); l.UUID != newUUID {
			t.Fatalf("LV old is %s, want the moved LV %s", l.UUID, newUUID)
		}
		h.release(t)
		sameData(t, src, out)
		waitFor(t, "replaced file's LV purged at its last close", 15*time.Second, func() bool {
			return len(e.hiddenLVs()) == 0
		})
	})

	t.Run("mv over a file held elsewhere", func(t *testing.T) {
		// The replaced LV cannot be removed: everything is put back.
		sh(t, "cp", src, m.path("x"))
		sh(t, "cp", src2, m.path("y"))
		x, y := e.wantFileLV("x", 3*mib+1).UUID, e.wantFileLV("y", 1*mib+7).UUID
		h := hold(t, e.devPath("y"), "")
		if err := os.Rename(m.path("x"), m.path("y")); !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("mv over a file held elsewhere: %v, want EBUSY", err)
		}
		lvs, _ := e.lvs()
		if lvs["x"].UUID != x || lvs["y"].UUID != y || len(e.hiddenLVs()) != 0 {
			t.Fatalf("LVs after a failed mv: %v", names(lvs))
		}
		sameData(t, src, m.path("x"))
		sameData(t, src2, m.path("y"))
		h.release(t)
	})
}

func TestNoSpace(t *testing.T) {
	e := newVG(t)
	m := e.mount()
	src := e.file("src", 20*mib, 5)
	sh(t, "lvcreate", "-q", "-Wn", "-l", "100%FREE", "-n", "filler", e.vg)

	// A full VG: the file cannot get an LV, cp fails with ENOSPC and
	// nothing is left behind (neither an LV nor a file without one).
	before := e.files()
	out, err := try("cp", src, m.path("full"))
	if err == nil || !strings.Contains(out, "No space left on device") {
		t.Fatalf("cp into a full VG: %v: %s", err, out)
	}
	waitFor(t, "file without a volume gone", 10*time.Second, func() bool { return !m.has("full") })
	if after := e.files(); !equal(after, before) {
		t.Fatalf("LVs after a failed create: %v, before %v", after, before)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(m.dir, &st); err != nil || st.Bfree != 0 || st.Bavail != 0 {
		t.Fatalf("statfs of a full VG: free %d avail %d, %v", st.Bfree, st.Bavail, err)
	}
	// Once volfs knows the VG is full (statfs said so), creating a file
	// fails at once: touch says ENOSPC and no file stays behind.
	if out, err := try("touch", m.path("touched")); err == nil || !strings.Contains(out, "No space left on device") {
		t.Fatalf("touch in a full VG: %v: %s", err, out)
	}
	if m.has("touched") {
		t.Fatal("a file touch could not create is still listed")
	}

	// Room for 2 extents: the file grows as far as it can (geometric steps
	// fail, exact ones succeed), then ENOSPC.
	sh(t, "lvreduce", "-q", "-f", "-l", "-2", e.vg+"/filler")
	// volfs's view of the free space is up to a second old (README);
	// once statfs shows the room, creating a file succeeds.
	waitFor(t, "statfs shows the freed extents", 10*time.Second, func() bool {
		return syscall.Statfs(m.dir, &st) == nil && st.Bavail > 0
	})
	out, err = try("cp", src, m.path("part"))
	if err == nil || !strings.Contains(out, "No space left on device") {
		t.Fatalf("cp of 20 MiB into 8 MiB: %v: %s", err, out)
	}
	l := e.waitLV("part", "LV of the partly written file", func(l lv) bool { return l.Size == 2*extent })
	n := size(t, m.path("part"))
	if n <= 0 || n > l.Size {
		t.Fatalf("size of the partly written file: %d (LV %d)", n, l.Size)
	}
	if string(fileBytes(t, m.path("part"), 0, n)) != string(fileBytes(t, src, 0, n)) {
		t.Fatal("partly written file differs from the source")
	}
}

func equal(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00")
}
