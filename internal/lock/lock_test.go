package lock

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/proc"
)

func TestTake(t *testing.T) {
	dir := t.TempDir()
	self, err := proc.Self()
	if err != nil {
		t.Fatal(err)
	}
	a := Holder{Mount: "/mnt/a", Proc: self}
	l, err := Take(dir, "device x", false, a)
	if err != nil {
		t.Fatal(err)
	}
	// flock conflicts between open files even within one process.
	_, err = Take(dir, "device x", false, Holder{Mount: "/mnt/b", Proc: self})
	var he *HeldError
	if !errors.As(err, &he) || he.Holder != a || !strings.Contains(err.Error(), "/mnt/a (pid") {
		t.Fatalf("second exclusive Take: %v, want held by %v", err, a)
	}
	if _, err := Take(dir, "device x", true, Holder{}); !errors.As(err, &he) {
		t.Fatalf("shared Take of an exclusive lock: %v", err)
	}
	if hs := Held(dir, "device "); len(hs) != 1 || hs[0] != a {
		t.Fatalf("Held = %v, want [%v]", hs, a)
	}
	// A lock dies with its holder (here: its file).
	l.Close()
	if hs := Held(dir, "device "); len(hs) != 0 {
		t.Fatalf("Held after Close = %v", hs)
	}
	l2, err := Take(dir, "device x", false, Holder{Mount: "/mnt/b", Proc: self})
	if err != nil {
		t.Fatalf("Take after the holder let go: %v", err)
	}
	l2.Close()
	// Shared locks coexist and exclude an exclusive one.
	s1, err1 := Take(dir, "vg", true, Holder{})
	s2, err2 := Take(dir, "vg", true, Holder{})
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if _, err := Take(dir, "vg", false, a); !errors.As(err, &he) {
		t.Fatalf("exclusive Take of a shared lock: %v", err)
	}
	s1.Close()
	s2.Close()
}

// Lock files go with their last holder, and those of dead holders are
// swept; a lock whose file was removed under it is taken again.
func TestLockFilesRemoved(t *testing.T) {
	dir := t.TempDir()
	self, _ := proc.Self()
	h := Holder{Mount: "/mnt/a", Proc: self}
	count := func() int {
		files, _ := filepath.Glob(filepath.Join(dir, "*.lock"))
		return len(files)
	}
	l, err := Take(dir, "device x", false, h)
	if err != nil {
		t.Fatal(err)
	}
	s1, _ := Take(dir, "vg", true, Holder{})
	s2, _ := Take(dir, "vg", true, Holder{})
	if n := count(); n != 2 {
		t.Fatalf("%d lock files, want 2", n)
	}
	s1.Close()
	if n := count(); n != 2 {
		t.Fatalf("a shared lock's file went while another holder has it: %d files", n)
	}
	s2.Close()
	l.Close()
	if n := count(); n != 0 {
		t.Fatalf("%d lock files left after every holder let go", n)
	}
	// A dead server's file (no flock on it) is swept by the next Take.
	if err := os.WriteFile(filepath.Join(dir, "dead.lock"), []byte("x\n/m\n1 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err = Take(dir, "device y", false, h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "dead.lock")); !os.IsNotExist(err) {
		t.Errorf("a dead holder's lock file survived: %v", err)
	}
	// Still held: a second Take is refused, whatever was swept.
	if _, err := Take(dir, "device y", false, h); err == nil {
		t.Error("a held lock was taken twice")
	}
	l.Close()
}
