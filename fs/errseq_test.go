package fs

import (
	"syscall"
	"testing"
)

// TestErrSeq follows the kernel's write-back error reporting (errseq_t):
// each handle open when an error happens sees it once; a handle opened
// later sees an error no fsync reported; close reports without making it
// seen.
func TestErrSeq(t *testing.T) {
	var s errSeq
	a, b := s.sample(), s.sample()
	if e := s.check(&a, true); e != 0 {
		t.Fatalf("no error yet, check = %v", e)
	}
	s.set(syscall.EIO)
	s.set(syscall.EIO) // the same error, taken again before anyone saw it
	if e := s.check(&a, true); e != syscall.EIO {
		t.Fatalf("a: %v, want EIO", e)
	}
	if e := s.check(&a, true); e != 0 {
		t.Fatalf("a again: %v, want 0", e)
	}
	if e := s.check(&b, true); e != syscall.EIO {
		t.Fatalf("b: %v, want EIO", e)
	}
	if c := s.sample(); s.check(&c, true) != 0 {
		t.Fatal("a handle opened after an fsync reported the error sees it")
	}
	// A new error after it was seen is a new error for everyone.
	s.set(syscall.ENOSPC)
	if e := s.check(&a, true); e != syscall.ENOSPC {
		t.Fatalf("a: %v, want ENOSPC", e)
	}
	// Reported by close only: the closing handle saw it, a later one
	// sees it too.
	s.set(syscall.EIO)
	if e := s.check(&b, false); e != syscall.EIO {
		t.Fatalf("b at close: %v, want EIO", e)
	}
	if e := s.check(&b, false); e != 0 {
		t.Fatalf("b at close again: %v, want 0", e)
	}
	s.set(syscall.EIO) // a second failure after close reported the first
	if e := s.check(&b, true); e != syscall.EIO {
		t.Fatalf("b after a second failure: %v, want EIO", e)
	}
	d := s.sample()
	if e := s.check(&d, true); e != 0 {
		t.Fatalf("d opened after an fsync saw the latest: %v, want 0", e)
	}
	// The last close forgets only what an fsync reported.
	s.forgetSeen()
	if s.any() {
		t.Fatal("a seen error survives the last close")
	}
	s.set(syscall.EIO)
	s.forgetSeen()
	e := s.sample()
	if got := s.check(&e, true); got != syscall.EIO {
		t.Fatalf("reopened after an unseen error: %v, want EIO", got)
	}
	s.set(syscall.ENOSYS)
	if got := s.check(&e, true); got != syscall.EIO {
		t.Fatalf("ENOSYS recorded as %v, want EIO", got)
	}
}
