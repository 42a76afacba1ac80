package lock

import (
	"errors"
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
