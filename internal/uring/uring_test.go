package uring

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestReadWrite writes a file through the ring and reads it back, as the
// FUSE queues do with devices.
func TestReadWrite(t *testing.T) {
	r := newRing(t, 8)
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	want := bytes.Repeat([]byte("volfs ring "), 1000)
	got := make([]byte, len(want))
	// The kernel writes into got and reads want while the test waits:
	// pinned, their addresses may travel as integers.
	var pin runtime.Pinner
	defer pin.Unpin()
	pin.Pin(&want[0])
	pin.Pin(&got[0])
	do := func(op uint8, buf []byte, off uint64, tag uint64) int32 {
		t.Helper()
		s := r.SQE()
		s.Opcode, s.Fd = op, int32(f.Fd())
		s.Addr, s.Len, s.Off = uint64(uintptr(unsafe.Pointer(&buf[0]))), uint32(len(buf)), off
		s.UserData = tag
		submitAndWait(t, r)
		var res int32 = -1
		n := 0
		r.Completions(func(c *CQE) {
			if c.UserData != tag {
				t.Errorf("completion for %d, want %d", c.UserData, tag)
			}
			res = c.Res
			n++
		})
		if n != 1 {
			t.Fatalf("%d completions, want 1", n)
		}
		return res
	}
	if n := do(OpWrite, want, 4096, 7); n != int32(len(want)) {
		t.Fatalf("write: %d", n)
	}
	if n := do(OpRead, got, 4096, 8); n != int32(len(want)) {
		t.Fatalf("read: %d", n)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs from what was written")
	}
	if n := do(OpRead, got, 1<<30, 9); n != 0 {
		t.Fatalf("read past the end: %d, want 0", n)
	}
}

// TestFullQueue checks that SQE reports a full submission queue instead of
// overwriting entries not yet submitted.
func TestFullQueue(t *testing.T) {
	r := newRing(t, 4)
	for i := range 4 {
		if r.SQE() == nil {
			t.Fatalf("SQE %d: queue full too early", i)
		}
	}
	if r.SQE() != nil {
		t.Fatal("a fifth SQE in a queue of four")
	}
}

// TestInjectResult checks the fault injection the FUSE queues' tests use:
// a NOP that completes with a chosen error.
func TestInjectResult(t *testing.T) {
	r := newRing(t, 4)
	s := r.SQE()
	res := -int32(syscall.EIO)
	s.Opcode, s.OpFlags, s.Len, s.UserData = OpNop, NopInjectResult, uint32(res), 42
	submitAndWait(t, r)
	n := 0
	r.Completions(func(c *CQE) {
		n++
		if c.UserData != 42 || c.Res != -int32(syscall.EIO) {
			t.Errorf("completion %d res %d, want 42 res %d", c.UserData, c.Res, -int32(syscall.EIO))
		}
	})
	if n != 1 {
		t.Fatalf("%d completions, want 1", n)
	}
}

// TestWorkPending: a read that completes later (an eventfd written by
// another thread) shows in WorkPending without a system call, and Poll
// then brings its completion; Sleep waits for the next one. The FUSE
// queues poll this way for requests and device completions.
func TestWorkPending(t *testing.T) {
	r := newRing(t, 4)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	read := func(tag uint64) {
		s := r.SQE()
		s.Opcode, s.Fd, s.Len, s.UserData = OpRead, int32(efd), 8, tag
		s.Addr = uint64(uintptr(unsafe.Pointer(&buf[0]))) // not Go memory
	}
	write := func() {
		go func() {
			one := [8]byte{1}
			unix.Write(efd, one[:])
		}()
	}
	completed := func(tag uint64) {
		t.Helper()
		n := 0
		r.Completions(func(c *CQE) {
			n++
			if c.UserData != tag || c.Res != 8 {
				t.Errorf("completion %d res %d, want %d res 8", c.UserData, c.Res, tag)
			}
		})
		if n != 1 {
			t.Fatalf("%d completions, want 1", n)
		}
	}

	read(1)
	if err := r.Poll(); err != nil {
		t.Fatal(err)
	}
	if r.WorkPending() {
		t.Fatal("work pending before the eventfd was written")
	}
	write()
	deadline := time.Now().Add(5 * time.Second)
	for !r.WorkPending() {
		if time.Now().After(deadline) {
			t.Fatal("the eventfd was written, and after 5 s WorkPending still says nothing is pending")
		}
	}
	if err := r.Poll(); err != nil {
		t.Fatal(err)
	}
	if !r.Ready() {
		t.Fatal("WorkPending said so, and Poll brought no completion")
	}
	completed(1)
	if r.WorkPending() {
		t.Fatal("work still pending once the completion was consumed")
	}

	read(2)
	write()
	if err := r.Sleep(); err != nil {
		t.Fatal(err)
	}
	for !r.Ready() { // an interrupted Sleep returns early
		if err := r.Sleep(); err != nil {
			t.Fatal(err)
		}
	}
	completed(2)
}

// submitAndWait submits and waits until a completion is there: a signal
// (the Go runtime's preemption, frequent under -race) ends a wait early,
// with nothing completed, as it does in the FUSE queues' loop.
func submitAndWait(t *testing.T, r *Ring) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := r.SubmitAndWait(1); err != nil {
			t.Fatal(err)
		}
		if r.Ready() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no completion after 5 s")
		}
	}
}

// newRing sets up a ring of n entries for the test, on a thread of its
// own (a ring belongs to the thread that submits), or skips.
func newRing(t *testing.T, n uint32) *Ring {
	t.Helper()
	runtime.LockOSThread()
	r, err := New(n)
	if err != nil {
		runtime.UnlockOSThread()
		t.Skipf("no io_uring here: %v", err)
	}
	t.Cleanup(func() {
		r.Close()
		runtime.UnlockOSThread()
	})
	return r
}
