// Package uring is the small part of Linux io_uring that volfs uses: one
// ring with 128-byte submission entries (FUSE-over-io_uring commands need
// them), read and write on fds, URING_CMD on a fixed file, and completions.
//
// A Ring is not safe for concurrent use: one goroutine, locked to its OS
// thread, owns it (the rings are set up with SINGLE_ISSUER and
// DEFER_TASKRUN, so completion work runs only when that thread enters the
// kernel to wait).
package uring

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Opcodes and flags from <linux/io_uring.h>.
const (
	OpFsync    = 3
	OpRead     = 22
	OpWrite    = 23
	OpUringCmd = 46

	SqeFixedFile  = 1 << 0
	FsyncDatasync = 1 << 0 // OpFlags of OpFsync

	setupCoopTaskrun  = 1 << 8
	setupTaskrunFlag  = 1 << 9
	setupSQE128       = 1 << 10
	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13

	featSingleMmap = 1 << 0

	sqTaskrun = 1 << 2 // IORING_SQ_TASKRUN in the SQ ring's flags

	enterGetEvents = 1 << 0
	enterExtArg    = 1 << 3

	registerFiles = 2

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	sqeSize = 128 // with SQE128
	cqeSize = 16
)

type sqRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type params struct {
	SqEntries, CqEntries, Flags, SqThreadCPU, SqThreadIdle, Features, WqFd uint32
	Resv                                                                   [3]uint32
	SqOff                                                                  sqRingOffsets
	CqOff                                                                  cqRingOffsets
}

// SQE is a submission entry (the first 64 bytes; Cmd is the 80-byte
// command area that follows with SQE128).
type SQE struct {
	Opcode   uint8
	Flags    uint8
	Ioprio   uint16
	Fd       int32
	Off      uint64 // also cmd_op in its low 32 bits for URING_CMD
	Addr     uint64
	Len      uint32
	OpFlags  uint32
	UserData uint64
	BufIndex uint16
	Personal uint16
	FileIdx  int32
	Cmd      [80]byte
}

// CQE is a completion entry.
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// The kernel's layouts (<linux/io_uring.h>), checked at compile time: an
// array type [N]byte is assignable only to [N]byte, so a size that
// differs does not compile.
var (
	_ [sqeSize]byte = [unsafe.Sizeof(SQE{})]byte{}            // io_uring_sqe with SQE128
	_ [48]byte      = [unsafe.Offsetof(SQE{}.Cmd)]byte{}      // sqe->cmd
	_ [32]byte      = [unsafe.Offsetof(SQE{}.UserData)]byte{} // sqe->user_data
	_ [cqeSize]byte = [unsafe.Sizeof(CQE{})]byte{}            // io_uring_cqe without CQE32
	_ [120]byte     = [unsafe.Sizeof(params{})]byte{}         // io_uring_params
	_ [40]byte      = [unsafe.Sizeof(sqRingOffsets{})]byte{}  // io_sqring_offsets
	_ [40]byte      = [unsafe.Sizeof(cqRingOffsets{})]byte{}  // io_cqring_offsets
	_ [24]byte      = [unsafe.Sizeof(getEventsArg{})]byte{}   // io_uring_getevents_arg
	_ [16]byte      = [unsafe.Sizeof(unix.Timespec{})]byte{}  // __kernel_timespec
)

// Ring is one io_uring instance.
type Ring struct {
	fd      int
	ringMem []byte // SQ and CQ rings, one mapping (IORING_FEAT_SINGLE_MMAP)
	sqeMem  []byte
	sqHead  *atomic.Uint32
	sqTail  *atomic.Uint32
	sqFlags *atomic.Uint32
	sqMask  uint32
	sqArray []uint32
	cqHead  *atomic.Uint32
	cqTail  *atomic.Uint32
	cqMask  uint32
	cqes    []CQE
	sqes    []SQE
	pending uint32 // SQEs filled but not yet submitted
	tail    uint32 // our copy of the SQ tail
	// argMem holds the bounded wait's argument and its timeout. The
	// kernel gets their addresses as integers (in io_uring_enter's
	// argument and inside it): they live outside the Go heap, where
	// nothing moves or frees them while the ring exists.
	argMem  []byte
	waitArg *getEventsArg
}

// New sets up a ring with room for entries submissions (a power of two)
// and twice as many completions.
func New(entries uint32) (*Ring, error) {
	p := params{Flags: setupSQE128 | setupSingleIssuer | setupDeferTaskrun | setupCoopTaskrun | setupTaskrunFlag}
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &Ring{fd: int(fd)}
	if p.Features&featSingleMmap == 0 {
		r.Close()
		return nil, fmt.Errorf("io_uring: kernel lacks IORING_FEAT_SINGLE_MMAP")
	}
	ringSize := max(p.SqOff.Array+p.SqEntries*4, p.CqOff.Cqes+p.CqEntries*cqeSize)
	mem, err := unix.Mmap(r.fd, offSQRing, int(ringSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("io_uring mmap rings: %w", err)
	}
	r.ringMem = mem
	sqes, err := unix.Mmap(r.fd, offSQEs, int(p.SqEntries*sqeSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("io_uring mmap sqes: %w", err)
	}
	r.sqeMem = sqes
	r.sqHead = (*atomic.Uint32)(unsafe.Pointer(&mem[p.SqOff.Head]))
	r.sqTail = (*atomic.Uint32)(unsafe.Pointer(&mem[p.SqOff.Tail]))
	r.sqFlags = (*atomic.Uint32)(unsafe.Pointer(&mem[p.SqOff.Flags]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&mem[p.SqOff.RingMask]))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Pointer(&mem[p.SqOff.Array])), p.SqEntries)
	r.cqHead = (*atomic.Uint32)(unsafe.Pointer(&mem[p.CqOff.Head]))
	r.cqTail = (*atomic.Uint32)(unsafe.Pointer(&mem[p.CqOff.Tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&mem[p.CqOff.RingMask]))
	r.cqes = unsafe.Slice((*CQE)(unsafe.Pointer(&mem[p.CqOff.Cqes])), p.CqEntries)
	r.sqes = unsafe.Slice((*SQE)(unsafe.Pointer(&sqes[0])), p.SqEntries)
	r.tail = r.sqTail.Load()
	args, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("io_uring mmap arguments: %w", err)
	}
	r.argMem = args
	r.waitArg = (*getEventsArg)(unsafe.Pointer(&args[0]))
	ts := (*unix.Timespec)(unsafe.Pointer(&args[unsafe.Sizeof(getEventsArg{})]))
	*ts = maxWait
	r.waitArg.Ts = uint64(uintptr(unsafe.Pointer(ts)))
	return r, nil
}

// Close releases the ring.
func (r *Ring) Close() {
	if r.argMem != nil {
		unix.Munmap(r.argMem)
	}
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.ringMem != nil {
		unix.Munmap(r.ringMem)
	}
	unix.Close(r.fd)
}

// RegisterFiles makes fds the ring's fixed files 0..n-1: the ring keeps
// its own reference, so a fixed file stays valid whoever closes the fd.
func (r *Ring) RegisterFiles(fds []int32) error {
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), registerFiles,
		uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), 0, 0)
	if errno != 0 {
		return fmt.Errorf("io_uring register files: %w", errno)
	}
	return nil
}

// SQE returns a cleared submission entry to fill, or nil if the
// submission queue is full (submit first).
func (r *Ring) SQE() *SQE {
	if r.tail-r.sqHead.Load() >= uint32(len(r.sqes)) {
		return nil
	}
	i := r.tail & r.sqMask
	s := &r.sqes[i]
	*s = SQE{}
	r.sqArray[i] = i
	r.tail++
	r.pending++
	return s
}

// getEventsArg is struct io_uring_getevents_arg.
type getEventsArg struct {
	Sigmask   uint64
	SigmaskSz uint32
	MinWait   uint32
	Ts        uint64
}

// maxWait bounds one wait in the kernel (see SubmitAndWait).
var maxWait = unix.Timespec{Nsec: 250e6}

// NOP and fault injection: IORING_OP_NOP with IORING_NOP_INJECT_RESULT
// completes with the result in Len (kernel >= 6.10).
const (
	OpNop           = 0
	NopInjectResult = 1 << 0
)

// SubmitAndWait submits what SQE handed out and waits until at least
// wait completions are there, or at most a quarter second. EINTR and the
// timeout are not errors: it returns early.
//
// The wait is a raw system call: the thread keeps its P, so the Go
// scheduler does not hand the P off and wake another thread each time
// the queue sleeps (measured: QD1 latency +35 µs over the raw device with
// a plain syscall, +21 µs raw). A stop-the-world still gets through: the
// runtime's preemption signal ends the wait with EINTR, and the bounded
// wait covers a signal that came just before the wait began.
func (r *Ring) SubmitAndWait(wait uint32) error {
	if wait == 0 {
		return r.enter(0, 0, 0, 0)
	}
	// waitArg is not Go memory (argMem): its address may travel as a
	// uintptr.
	return r.enter(wait, enterGetEvents|enterExtArg, uintptr(unsafe.Pointer(r.waitArg)), unsafe.Sizeof(*r.waitArg))
}

// Poll submits what SQE handed out and runs the completion work pending,
// without waiting: completions that are ready appear for Completions.
func (r *Ring) Poll() error { return r.enter(0, enterGetEvents, 0, 0) }

// Sleep submits what SQE handed out and waits, without a time limit, until
// a completion is there. Unlike SubmitAndWait it is an ordinary system
// call: the Go scheduler takes the thread's P while it waits, so a queue
// that has nothing to do costs nothing (SubmitAndWait's wait keeps the P,
// and the runtime's preemption signal ends it every 10 ms or so).
func (r *Ring) Sleep() error {
	r.sqTail.Store(r.tail)
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(r.pending), 1, enterGetEvents, 0, 0)
	return r.entered(n, errno)
}

// WorkPending reports, without a system call, whether completions are
// waiting or completion work is (the kernel sets IORING_SQ_TASKRUN when it
// queues work for the ring's thread, which runs it in Poll): polling
// this between Polls finds a completion as soon as a Poll in a loop would.
func (r *Ring) WorkPending() bool {
	return r.sqFlags.Load()&sqTaskrun != 0 || r.Ready()
}

// enter publishes the SQ tail and calls io_uring_enter; interruptions,
// timeouts and a full CQ are not errors.
func (r *Ring) enter(wait uint32, flags, arg, argSz uintptr) error {
	r.sqTail.Store(r.tail)
	n, _, errno := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(r.pending), uintptr(wait), flags, arg, argSz)
	return r.entered(n, errno)
}

func (r *Ring) entered(n uintptr, errno syscall.Errno) error {
	switch errno {
	case 0:
		r.pending -= uint32(n)
	case syscall.EINTR, syscall.EAGAIN, syscall.EBUSY, syscall.ETIME:
	default:
		return fmt.Errorf("io_uring_enter: %w", errno)
	}
	return nil
}

// Ready reports whether completions are waiting.
func (r *Ring) Ready() bool { return r.cqHead.Load() != r.cqTail.Load() }

// Completions calls f for each completion there is and consumes them.
func (r *Ring) Completions(f func(*CQE)) {
	head := r.cqHead.Load()
	tail := r.cqTail.Load()
	for ; head != tail; head++ {
		f(&r.cqes[head&r.cqMask])
	}
	r.cqHead.Store(head)
}
