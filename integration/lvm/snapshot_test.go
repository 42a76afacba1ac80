package lvm

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// volfs runs the binary under test.
func volfs(args ...string) (string, error) {
	out, err := exec.Command(volfsBin, args...).CombinedOutput()
	return string(out), err
}

func mustVolfs(t *testing.T, args ...string) string {
	t.Helper()
	out, err := volfs(args...)
	if err != nil {
		t.Fatalf("volfs %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// snapLVs returns the LVs of the snapshots called name (any image).
func (e *env) snapLVs(name string) []lv {
	e.t.Helper()
	lvs, _ := e.lvs()
	want := "volfs.snap.name=" + base64.RawURLEncoding.EncodeToString([]byte(name))
	var out []lv
	for _, l := range lvs {
		if strings.HasPrefix(l.Name, "+2Fvolfs-snap-") && l.hasTag(want) {
			out = append(out, l)
		}
	}
	return out
}

func inoOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestSnapshots drives snapshots, rollback and clones through the CLI and
// file tools on a thin pool; the subtests share one VG and mount, each on
// its own images.
func TestSnapshots(t *testing.T) {
	e := newVG(t)
	e.thinPool("pool", "1g")
	m := e.mount("--thin-pool", "pool")
	dataA := e.file("a", 6*mib+12345, 1)
	dataB := e.file("b", 6*mib+12345, 2)

	t.Run("CreateRead", func(t *testing.T) {
		img := m.path("web")
		sh(t, "cp", dataA, img)
		mustVolfs(t, "snapshot", "create", img, "before upgrade")
		ls := e.snapLVs("before upgrade")
		if len(ls) != 1 {
			t.Fatalf("snapshot LVs: %+v", ls)
		}
		l := ls[0]
		// Read-only, activation-skip, inactive, tagged as volfs's.
		if l.Attr[1] != 'r' || l.Attr[9] != 'k' || l.Attr[4] == 'a' || !l.hasTag("volfs") || l.SegType != "thin" {
			t.Fatalf("snapshot LV %s: attr %s tags %v", l.Name, l.Attr, l.Tags)
		}
		// The image changes; the snapshot keeps the old bytes.
		sh(t, "cp", dataB, img)
		snap := m.path(".snapshots/web/before upgrade")
		out := filepath.Join(e.base, "copy")
		sh(t, "cp", snap, out)
		sameData(t, out, dataA)
		sameData(t, img, dataB)
		sh(t, "qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", snap, dataA)
		if size(t, snap) != 6*mib+12345 {
			t.Fatalf("snapshot size %d", size(t, snap))
		}
		// Deactivated again after the last close.
		e.waitLV(l.Name, "inactive after the last close", func(l lv) bool { return l.Attr[4] != 'a' })
		// Listed, as JSON too.
		var list []struct{ Name, Image, Path string }
		if err := json.Unmarshal([]byte(mustVolfs(t, "snapshot", "list", "--json", img)), &list); err != nil ||
			len(list) != 1 || list[0].Name != "before upgrade" || list[0].Path != snap {
			t.Fatalf("snapshot list --json: %+v, %v", list, err)
		}
		if out := mustVolfs(t, "snapshot", "list", img); !strings.Contains(out, "before upgrade") {
			t.Fatalf("snapshot list: %s", out)
		}
		// The same name twice is refused.
		if out, err := volfs("snapshot", "create", img, "before upgrade"); err == nil || !strings.Contains(out, "exists") {
			t.Fatalf("second snapshot of the same name: %v: %s", err, out)
		}
	})

	t.Run("ReadOnly", func(t *testing.T) {
		img := m.path("ro")
		sh(t, "cp", dataA, img)
		mustVolfs(t, "snapshot", "create", img, "s")
		snap := m.path(".snapshots/ro/s")
		for what, err := range map[string]error{
			"open for writing": func() error { f, err := os.OpenFile(snap, os.O_WRONLY, 0); f.Close(); return err }(),
			"truncate":         os.Truncate(snap, 0),
			"chmod":            os.Chmod(snap, 0o666),
		} {
			if !errors.Is(err, syscall.EROFS) {
				t.Errorf("%s of a snapshot: %v, want EROFS", what, err)
			}
		}
		if out, err := try("dd", "if="+dataB, "of="+snap, "conv=notrunc", "status=none"); err == nil {
			t.Errorf("dd onto a snapshot succeeded: %s", out)
		}
		sameData(t, snap, dataA)
		// Reserved: no file may be called .snapshots.
		if err := os.WriteFile(m.path(".snapshots"), []byte("x"), 0o644); err == nil {
			t.Error("a file called .snapshots was created")
		}
		if err := os.Rename(img, m.path(".snapshots")); err == nil {
			t.Error("rename to .snapshots succeeded")
		}
	})

	// Another tool tags a snapshot LV with a name volfs never gives ("a/b",
	// ".."): it is not listed (a '/' in a name fails the kernel's whole
	// readdir with EIO), the real snapshot still is.
	t.Run("ForeignSnapshotNames", func(t *testing.T) {
		sh(t, "cp", dataA, m.path("fsn"))
		mustVolfs(t, "snapshot", "create", m.path("fsn"), "good")
		ls := e.snapLVs("good")
		if len(ls) != 1 {
			t.Fatalf("snapshot LVs: %+v", ls)
		}
		for i, bad := range []string{"a/b", ".."} {
			args := []string{"lvcreate", "-q", "-s", "-n", fmt.Sprintf("+2Fvolfs-snap-ffffffffffff000%d", i),
				"--addtag", "volfs.snap.name=" + base64.RawURLEncoding.EncodeToString([]byte(bad))}
			for _, tag := range ls[0].Tags {
				if !strings.HasPrefix(tag, "volfs.snap.name=") {
					args = append(args, "--addtag", tag)
				}
			}
			sh(t, args[0], append(args[1:], e.vg+"/fsn")...)
		}
		dir := m.path(".snapshots/fsn")
		deadline := time.Now().Add(10 * time.Second)
		for {
			ents, err := os.ReadDir(dir)
			got := make([]string, len(ents))
			for i, en := range ents {
				got[i] = en.Name()
			}
			if err == nil && equal(got, []string{"good"}) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("readdir %s: %q %v, want only good", dir, got, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("Invisible", func(t *testing.T) {
		sh(t, "cp", dataA, m.path("vis"))
		mustVolfs(t, "snapshot", "create", m.path("vis"), "s")
		if slices.Contains(m.names(), ".snapshots") {
			t.Fatalf("readdir lists .snapshots: %v", m.names())
		}
		if st, err := os.Stat(m.path(".snapshots")); err != nil || !st.IsDir() {
			t.Fatalf("stat .snapshots: %v", err)
		}
		ents, err := os.ReadDir(m.path(".snapshots/vis"))
		if err != nil || len(ents) != 1 || ents[0].Name() != "s" {
			t.Fatalf("readdir .snapshots/vis: %v %v", ents, err)
		}
		// rsync -a of the mount would copy images, not snapshots.
		if out := sh(t, "rsync", "-a", "--list-only", m.dir+"/"); !strings.Contains(out, "vis") || strings.Contains(out, ".snapshots") {
			t.Fatalf("rsync -a --list-only:\n%s", out)
		}
	})

	t.Run("RemoveRefused", func(t *testing.T) {
		img := m.path("keep")
		sh(t, "cp", dataA, img)
		mustVolfs(t, "snapshot", "create", img, "s1")
		if err := os.Remove(img); !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("rm of an image with snapshots: %v, want EBUSY", err)
		}
		if !strings.Contains(m.logText(), "s1") {
			t.Fatalf("the log does not name the snapshot:\n%s", m.logText())
		}
		sameData(t, img, dataA)
		// mv over it is refused too.
		sh(t, "cp", dataB, m.path("other"))
		if err := os.Rename(m.path("other"), img); !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("mv over an image with snapshots: %v, want EBUSY", err)
		}
		// rm in .snapshots deletes the snapshot; then the image goes.
		if err := os.Remove(m.path(".snapshots/keep/s1")); err != nil {
			t.Fatal(err)
		}
		if len(e.snapLVs("s1")) != 0 {
			t.Fatal("snapshot LV left after rm")
		}
		if err := os.Remove(img); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("MoveKeepsSnapshots", func(t *testing.T) {
		sh(t, "cp", dataA, m.path("mv1"))
		mustVolfs(t, "snapshot", "create", m.path("mv1"), "s")
		if err := os.Rename(m.path("mv1"), m.path("mv2")); err != nil {
			t.Fatal(err)
		}
		sameData(t, m.path(".snapshots/mv2/s"), dataA)
		if _, err := os.Stat(m.path(".snapshots/mv1")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf(".snapshots/mv1 after mv: %v", err)
		}
		// mv inside .snapshots renames the snapshot.
		if err := os.Rename(m.path(".snapshots/mv2/s"), m.path(".snapshots/mv2/renamed")); err != nil {
			t.Fatal(err)
		}
		sameData(t, m.path(".snapshots/mv2/renamed"), dataA)
		mustVolfs(t, "snapshot", "delete", m.path("mv2"), "renamed")
		if err := os.Remove(m.path("mv2")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Rollback", func(t *testing.T) {
		img := m.path("rb")
		sh(t, "cp", dataA, img)
		if err := os.Chmod(img, 0o640); err != nil {
			t.Fatal(err)
		}
		ino := inoOf(t, img)
		mustVolfs(t, "snapshot", "create", img, "good")
		sh(t, "cp", dataB, img)
		sh(t, "truncate", "-s", "9M", img)
		sameData(t, m.path(".snapshots/rb/good"), dataA)

		// Refused while open, naming why.
		h := hold(t, img, "")
		out, err := volfs("snapshot", "rollback", img, "good")
		if err == nil || !strings.Contains(out, "open") {
			t.Fatalf("rollback of an open image: %v: %s", err, out)
		}
		h.release(t)
		if size(t, img) != 9*mib || string(fileBytes(t, img, 0, 6*mib)) != string(fileBytes(t, dataB, 0, 6*mib)) {
			t.Fatalf("image changed by a refused rollback (size %d)", size(t, img))
		}

		mustVolfs(t, "snapshot", "rollback", img, "good")
		sameData(t, img, dataA)
		st, err := os.Stat(img)
		if err != nil || st.Mode().Perm() != 0o640 || st.Size() != 6*mib+12345 {
			t.Fatalf("after rollback: %v %v", st, err)
		}
		if got := inoOf(t, img); got != ino {
			t.Fatalf("inode number %d after rollback, was %d", got, ino)
		}
		if hid := e.hiddenLVs(); slices.ContainsFunc(hid, func(n string) bool { return strings.Contains(n, "rollback") }) {
			t.Fatalf("LVs left by the rollback: %v", hid)
		}
		// The snapshot survives and the image is writable.
		sameData(t, m.path(".snapshots/rb/good"), dataA)
		sh(t, "dd", "if="+dataB, "of="+img, "bs=64k", "count=1", "conv=notrunc", "status=none")
		// Same inode after a remount (the identity is in the new LV's tags).
		m.remount()
		if got := inoOf(t, img); got != ino {
			t.Fatalf("inode number %d after rollback and remount, was %d", got, ino)
		}
		sameData(t, m.path(".snapshots/rb/good"), dataA)
	})

	t.Run("Clone", func(t *testing.T) {
		src := m.path("tmpl")
		sh(t, "cp", dataA, src)
		if err := os.Chmod(src, 0o604); err != nil {
			t.Fatal(err)
		}
		mustVolfs(t, "clone", src, m.path("vm1"))
		sameData(t, m.path("vm1"), dataA)
		st, _ := os.Stat(m.path("vm1"))
		if st.Mode().Perm() != 0o604 || st.Size() != 6*mib+12345 || inoOf(t, m.path("vm1")) == inoOf(t, src) {
			t.Fatalf("clone: mode %v size %d ino %d (source %d)", st.Mode(), st.Size(), inoOf(t, m.path("vm1")), inoOf(t, src))
		}
		// Independent both ways.
		sh(t, "dd", "if="+dataB, "of="+m.path("vm1"), "bs=1M", "count=2", "conv=notrunc", "status=none")
		sameData(t, src, dataA)
		sh(t, "dd", "if="+dataB, "of="+src, "bs=1M", "skip=3", "seek=3", "count=2", "conv=notrunc", "status=none")
		if string(fileBytes(t, m.path("vm1"), 3*mib, 2*mib)) != string(fileBytes(t, dataA, 3*mib, 2*mib)) {
			t.Fatal("a write to the source shows in the clone")
		}
		// From a snapshot.
		mustVolfs(t, "snapshot", "create", src, "s")
		mustVolfs(t, "clone", m.path(".snapshots/tmpl/s"), m.path("vm2"))
		sameData(t, m.path("vm2"), m.path(".snapshots/tmpl/s"))
		// Onto an existing file: refused.
		if out, err := volfs("clone", src, m.path("vm1")); err == nil || !strings.Contains(out, "exists") {
			t.Fatalf("clone onto an existing file: %v: %s", err, out)
		}
		// Clones are ordinary files: rm works, the source is untouched.
		for _, n := range []string{"vm1", "vm2"} {
			if err := os.Remove(m.path(n)); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("OpenImageWritten", func(t *testing.T) {
		// A writer keeps the image open and has written unaligned bytes
		// (volfs's buffered path) past the old end: the snapshot holds
		// them and the size, flushed by the server first.
		img := m.path("busy")
		sh(t, "truncate", "-s", "1M", img)
		cmd := exec.Command("sh", "-c", `exec 3<>"$1"; dd if="$2" bs=1000 count=3000 seek=0 conv=notrunc status=none >&3 && echo done; read -r _`,
			"sh", img, dataB)
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stdin.Close(); _ = cmd.Wait() }()
		buf := make([]byte, 5)
		if _, err := stdout.Read(buf); err != nil || string(buf[:4]) != "done" {
			t.Fatalf("writer: %q %v", buf, err)
		}
		mustVolfs(t, "snapshot", "create", img, "live")
		snap := m.path(".snapshots/busy/live")
		if size(t, snap) != 3000000 {
			t.Fatalf("snapshot size %d, want 3000000", size(t, snap))
		}
		if string(fileBytes(t, snap, 0, 3000000)) != string(fileBytes(t, dataB, 0, 3000000)) {
			t.Fatal("the snapshot misses writes answered before it")
		}
	})

	t.Run("Linear", func(t *testing.T) {
		sh(t, "lvcreate", "-q", "-L", "4m", "-n", "lin", "-Wy", "--addtag", "volfs", e.vg)
		waitFor(t, "linear LV listed", externalDelay, func() bool { return m.has("lin") })
		out, err := volfs("snapshot", "create", m.path("lin"), "s")
		if err == nil || !strings.Contains(out, "--thin-pool") {
			t.Fatalf("snapshot of a linear image: %v: %s", err, out)
		}
		// A clone of it is a copy (TestCloneByCopy).
	})

	t.Run("PoolGuard", func(t *testing.T) {
		m.umount()
		m.args = append(m.args, "--pool-limit", "0.01")
		m.start()
		out, err := volfs("snapshot", "create", m.path("tmpl"), "full")
		if err == nil || !strings.Contains(out, "full") || !strings.Contains(out, "--pool-limit") {
			t.Fatalf("snapshot over the pool limit: %v: %s", err, out)
		}
		if out, err := volfs("clone", m.path("tmpl"), m.path("c")); err == nil || !strings.Contains(out, "full") {
			t.Fatalf("clone over the pool limit: %v: %s", err, out)
		}
	})
}
