package fs

import (
	"log/slog"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/uring"
)

// testQueue is a queue with a ring of 4 entries and an eventfd, set up on
// the calling goroutine's thread (which the ring's SINGLE_ISSUER binds it
// to): no FUSE connection behind it.
func testQueue(t *testing.T) *ringQueue {
	t.Helper()
	r, err := uring.New(4)
	if err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	return &ringQueue{s: &ringServer{log: slog.New(slog.DiscardHandler)}, r: r, efd: efd}
}

// TestRingQueueClosedWakesNothing: a worker that finishes a request after
// its queue has ended must not write to the queue's eventfd, whose number
// another file has by then (here a new eventfd; in a server, a device).
func TestRingQueueClosedWakesNothing(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	q := testQueue(t)
	old := q.efd
	q.close()
	// close freed the ring's descriptor too: open until the number comes
	// back.
	reused := -1
	for range 8 {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if fd == old {
			reused = fd
			break
		}
	}
	if reused < 0 {
		t.Skipf("descriptor %d not reused: another goroutine opened it", old)
	}
	q.finished(0)
	var b [8]byte
	if n, err := unix.Read(reused, b[:]); err != unix.EAGAIN {
		t.Fatalf("the ended queue wrote to descriptor %d, now another file's: read %d bytes, %v", old, n, err)
	}
}

// TestRingQueueSubmitFails: when the ring refuses submissions and its
// submission queue is full, sqe gives up and the queue fails, instead of
// retrying forever. The refusal is real: a ring set up with SINGLE_ISSUER
// answers io_uring_enter from another thread with EEXIST.
func TestRingQueueSubmitFails(t *testing.T) {
	// The ring's thread stays locked to its goroutine, which blocks until
	// the test ends: no other goroutine can run on it.
	made := make(chan *ringQueue)
	end := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(ended)
		r, err := uring.New(4)
		if err != nil {
			made <- nil
			return
		}
		q := &ringQueue{s: &ringServer{log: slog.New(slog.DiscardHandler)}, r: r, efd: -1}
		made <- q
		<-end
		q.close()
	}()
	q := <-made
	defer func() { close(end); <-ended }()
	if q == nil {
		t.Skip("no io_uring here")
	}
	for i := range 4 {
		if q.sqe() == nil { // NOPs, never submitted
			t.Fatalf("sqe %d: none in an empty queue: %v", i, q.err)
		}
	}
	got := make(chan *uring.SQE, 1)
	go func() {
		runtime.LockOSThread() // not the ring's thread either
		got <- q.sqe()
	}()
	select {
	case s := <-got:
		if s != nil || q.err == nil {
			t.Fatalf("sqe on a full queue whose ring refuses submissions: %v, queue error %v; want nil and an error", s, q.err)
		}
		t.Logf("queue failed: %v", q.err)
	case <-time.After(10 * time.Second):
		t.Fatal("sqe still retrying after 10 s on a ring that refuses submissions")
	}
}

// TestRingQueueInjectedSubmitFailure: the fault injection the integration
// test TestRingFailure uses makes sqe fail the queue the same way.
func TestRingQueueInjectedSubmitFailure(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	q := testQueue(t)
	defer q.close()
	q.fault.submit = true
	q.s.served.Store(failSubmitAfter)
	for range 4 {
		if q.sqe() == nil {
			t.Fatal("no sqe in an empty queue")
		}
	}
	if s := q.sqe(); s != nil || q.err == nil {
		t.Fatalf("sqe = %v, queue error %v; want nil and an error", s, q.err)
	}
	// A failed queue hands out nothing more, and its loop does not run.
	if q.sqe() != nil {
		t.Fatal("sqe after the queue failed")
	}
}

// TestRingEntryRearmed: an entry whose command the kernel ends with an
// error other than the connection's end is registered again; it is given
// up (loudly) only after maxEntryFails errors in a row; and a queue whose
// every entry was refused fails instead of ending quietly. The ring has no
// FUSE device behind fixed file 0, so the kernel refuses each registration
// (EBADF): a real completion for each command issued.
func TestRingEntryRearmed(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	q := testQueue(t)
	defer q.close()
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	q.ents = make([]ringEnt, 2)
	for i := range q.ents {
		q.ents[i].iov = (*[2]unix.Iovec)(unsafe.Pointer(&mem[i*64]))
	}
	q.live = 2

	q.complete(&uring.CQE{UserData: userData(kindFuse, 0), Res: -int32(unix.ENOENT)})
	for n := 1; q.live == 2; n++ {
		if n > maxEntryFails {
			t.Fatalf("entry 0 still live after %d errors in a row", n)
		}
		if got := q.s.rearmed.Load(); got != uint64(n) {
			t.Fatalf("after %d errors: %d registrations again, want %d", n, got, n)
		}
		if err := q.submit(1); err != nil {
			t.Fatal(err)
		}
		var cqes []uring.CQE
		q.r.Completions(func(c *uring.CQE) { cqes = append(cqes, *c) })
		if len(cqes) != 1 || cqes[0].UserData != userData(kindFuse, 0) || cqes[0].Res >= 0 {
			t.Fatalf("completions %+v; want one error for entry 0's registration", cqes)
		}
		q.complete(&cqes[0])
	}
	if q.live != 1 || q.s.rearmed.Load() != maxEntryFails || q.err != nil {
		t.Fatalf("live %d, rearmed %d, err %v; want 1, %d, none", q.live, q.s.rearmed.Load(), q.err, maxEntryFails)
	}
	// The connection's end ends an entry without a new registration.
	q.complete(&uring.CQE{UserData: userData(kindFuse, 1), Res: -int32(unix.ENOTCONN)})
	if q.live != 0 || q.tornDown != 1 || q.s.rearmed.Load() != maxEntryFails {
		t.Fatalf("after ENOTCONN: live %d, torn down %d, rearmed %d", q.live, q.tornDown, q.s.rearmed.Load())
	}
	if q.loop(); q.err != nil {
		t.Fatalf("a queue whose connection ended failed: %v", q.err)
	}
	// Without any entry ended by the connection's end, the queue lost
	// them all to errors: it fails.
	q.tornDown = 0
	if q.loop(); q.err == nil {
		t.Fatal("a queue whose every entry was refused ended without an error")
	}
}

func TestRingProcs(t *testing.T) {
	nq, err := possibleCPUs()
	if err != nil {
		t.Skipf("no CPU list here: %v", err)
	}
	if got := RingProcs(); got != nq+runtime.NumCPU() {
		t.Fatalf("RingProcs() = %d, want %d queues + %d CPUs", got, nq, runtime.NumCPU())
	}
}
