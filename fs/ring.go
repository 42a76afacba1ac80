package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/uring"
)

// FUSE-over-io_uring (kernel >= 6.14, fuse.enable_uring=Y): instead of
// read(2) and write(2) on /dev/fuse, the kernel puts each request into a
// buffer the server registered on an io_uring queue, one queue per CPU,
// and the server answers with a ring command that also fetches the next
// request. go-fuse mounts, negotiates INIT and keeps reading /dev/fuse for
// FORGET and INTERRUPT (which never take the ring); every other request
// arrives here. READ and WRITE of an open image inside its size, aligned to
// the device's block size, go to the device as ring operations of their
// own: the queue's thread never sleeps in a syscall per request, and one
// io_uring_enter submits the device I/O and the replies of a whole batch.
// Everything else is handed to go-fuse's protocol code in a goroutine.

// Layout of struct fuse_uring_req_header and its commands (<linux/fuse.h>).
const (
	ringHdrSize   = 288 // in_out[128], op_in[128], fuse_uring_ent_in_out
	ringOpInOff   = 128
	ringInOutOff  = 256
	inHeaderSize  = 40
	outHeaderSize = 16

	cmdRegister       = 1
	cmdCommitAndFetch = 2

	opRead  = 15
	opWrite = 16
	opFsync = 20
	opInit  = 26

	// ringDepth is the number of requests a queue holds at once. Each
	// has a payload buffer of maxIO; pages are touched only as used.
	ringDepth = 32
)

// user_data of a ring operation: its kind and the entry it belongs to.
const (
	kindFuse = iota + 1 // a FUSE request arrived (or the entry ended)
	kindDev             // the device operation of a fast-path request completed
	kindWake            // workers finished replies (eventfd)
)

type entInOut struct {
	Flags     uint64
	CommitID  uint64
	PayloadSz uint32
	Padding   uint32
	Reserved  uint64
}

type cmdReq struct {
	Flags    uint64
	CommitID uint64
	Qid      uint16
	_        [6]byte
}

// ioArgs is fuse_read_in and fuse_write_in (same layout).
type ioArgs struct {
	Fh        uint64
	Offset    uint64
	Size      uint32
	IOFlags   uint32
	LockOwner uint64
	Flags     uint32
	Padding   uint32
}

type outHeader struct {
	Len    uint32
	Error  int32
	Unique uint64
}

// ringServer is the set of queues of one mount.
type ringServer struct {
	root   *Root
	ps     *fuse.ProtocolServer
	log    *slog.Logger
	fuseFd int
	wg     sync.WaitGroup

	served atomic.Uint64 // requests answered through the ring
	direct atomic.Uint64 // of which the device I/O was a ring operation
}

// ringQueue is one queue: its ring, entries and the thread that owns them.
type ringQueue struct {
	s          *ringServer
	qid        int
	r          *uring.Ring
	ents       []ringEnt
	live       int           // entries still registered with the kernel
	inDevice   int           // fast-path device operations in flight
	devLatency time.Duration // moving average of their durations

	efd  int
	wake []byte // eventfd read buffer (8 bytes, not Go memory)

	mu   sync.Mutex
	done []int // entries whose reply a worker finished
}

// ringEnt is one registered request buffer.
type ringEnt struct {
	hdr     []byte // ringHdrSize
	payload []byte // maxIO, page aligned
	iov     *[2]unix.Iovec
	// A fast-path request on the device: the device it holds a
	// reference to, and the image it is for.
	dev     *device
	img     *Image
	started time.Time
}

func (e *ringEnt) in() *fuse.InHeader { return (*fuse.InHeader)(unsafe.Pointer(&e.hdr[0])) }
func (e *ringEnt) out() *outHeader    { return (*outHeader)(unsafe.Pointer(&e.hdr[0])) }
func (e *ringEnt) args() *ioArgs      { return (*ioArgs)(unsafe.Pointer(&e.hdr[ringOpInOff])) }
func (e *ringEnt) inOut() *entInOut   { return (*entInOut)(unsafe.Pointer(&e.hdr[ringInOutOff])) }

// setReply writes the reply's header (over the request's, whose unique it
// keeps) and the size of its payload.
func (e *ringEnt) setReply(errno syscall.Errno, n int) {
	*e.out() = outHeader{Len: uint32(outHeaderSize + n), Error: -int32(errno), Unique: e.in().Unique}
	e.inOut().PayloadSz = uint32(n)
}

// enableURing turns on the kernel's FUSE-over-io_uring switch, which only
// lets servers opt in (other FUSE servers are unaffected). It reports
// whether the kernel has it.
func enableURing(log *slog.Logger) bool {
	const param = "/sys/module/fuse/parameters/enable_uring"
	b, err := os.ReadFile(param)
	if err != nil {
		return false
	}
	if strings.TrimSpace(string(b)) == "Y" {
		return true
	}
	if err := os.WriteFile(param, []byte("Y"), 0); err != nil {
		log.Warn("cannot enable FUSE over io_uring; serving through /dev/fuse", slog.String("param", param), slog.Any("err", err))
		return false
	}
	log.Info("enabled FUSE over io_uring", slog.String("param", param))
	return true
}

// ringUsable reports whether this process can set up the rings; checked
// before INIT offers the kernel FUSE over io_uring.
func ringUsable(log *slog.Logger) bool {
	r, err := uring.New(4)
	if err != nil {
		log.Warn("FUSE over io_uring unusable; serving through /dev/fuse", slog.Any("err", err))
		return false
	}
	r.Close()
	return true
}

// ringInit starts the queues when go-fuse has answered INIT and before it
// serves anything else: once INIT has agreed on io_uring, the kernel holds
// every request until each queue has registered an entry.
type ringInit struct {
	fuse.RawFileSystem
	start func(*fuse.Server, fuse.RawFileSystem)
}

func (r *ringInit) Init(srv *fuse.Server) {
	r.RawFileSystem.Init(srv)
	r.start(srv, r.RawFileSystem)
}

// startRing registers the queues of a server that has just answered INIT.
// If they cannot all start, it makes the kernel fall back to /dev/fuse and
// returns the queues that did start (they end with the mount).
func startRing(srv *fuse.Server, rawFS fuse.RawFileSystem, mo *fuse.MountOptions, root *Root) *ringServer {
	s := &ringServer{root: root, log: root.log, fuseFd: -1}
	err := s.start(srv, rawFS, mo)
	if err == nil {
		root.stats.ring.Store(true)
		return s
	}
	s.log.Warn("FUSE over io_uring did not start; serving through /dev/fuse", slog.Any("err", err))
	if s.fuseFd >= 0 {
		if err := refuseRing(s.fuseFd); err != nil {
			s.log.Error("cannot make the kernel fall back to /dev/fuse: requests will wait for the ring", slog.Any("err", err))
		}
	}
	return s
}

func (s *ringServer) start(srv *fuse.Server, rawFS fuse.RawFileSystem, mo *fuse.MountOptions) error {
	ks := *srv.KernelSettings()
	if ks.Flags64()&fuse.CAP_OVER_IO_URING == 0 {
		return errors.New("the kernel did not offer FUSE over io_uring")
	}
	var err error
	if s.fuseFd, err = fuseDeviceFd(); err != nil {
		return err
	}
	nq, err := possibleCPUs()
	if err != nil {
		return err
	}
	// A second protocol server over the same file system, initialized
	// with the INIT the kernel sent, parses requests as the negotiated
	// protocol version has them.
	s.ps = fuse.NewProtocolServer(rawFS, mo)
	ks.InHeader = fuse.InHeader{Length: uint32(unsafe.Sizeof(ks)), Opcode: opInit, Unique: 1}
	var reply [256]byte
	if _, st := s.ps.HandleRequest([][]byte{unsafe.Slice((*byte)(unsafe.Pointer(&ks)), unsafe.Sizeof(ks))}, [][]byte{reply[:]}); !st.Ok() {
		return fmt.Errorf("initializing the ring's protocol server: %v", st)
	}
	// Each queue's thread keeps its P while it waits in the kernel
	// (uring.SubmitAndWait): the rest of the server needs Ps besides.
	if need := nq + runtime.NumCPU(); runtime.GOMAXPROCS(0) < need {
		runtime.GOMAXPROCS(need)
	}
	errs := make(chan error, nq)
	for q := range nq {
		s.wg.Add(1)
		go s.runQueue(q, errs)
	}
	var failed error
	for range nq {
		if err := <-errs; err != nil && failed == nil {
			failed = err
		}
	}
	if failed != nil {
		return failed
	}
	s.log.Info("serving FUSE requests through io_uring", slog.Int("queues", nq), slog.Int("depth", ringDepth))
	return nil
}

// refuseRing sends the kernel a registration it rejects (a queue that
// does not exist): on a failed registration it stops waiting for the ring
// and serves the connection through /dev/fuse.
func refuseRing(fuseFd int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := uring.New(4)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.RegisterFiles([]int32{int32(fuseFd)}); err != nil {
		return err
	}
	s := r.SQE()
	s.Opcode = uring.OpUringCmd
	s.Flags = uring.SqeFixedFile
	s.Off = cmdRegister
	s.Len = 2
	*(*cmdReq)(unsafe.Pointer(&s.Cmd[0])) = cmdReq{Qid: 0xffff}
	if err := r.SubmitAndWait(1); err != nil {
		return err
	}
	var res int32
	r.Completions(func(c *uring.CQE) { res = c.Res })
	if res >= 0 {
		return errors.New("the kernel accepted a registration for a queue that does not exist")
	}
	return nil
}

// wait returns once every queue has ended (at unmount).
func (s *ringServer) wait() {
	s.wg.Wait()
	if s.ps == nil {
		return
	}
	s.log.Info("io_uring queues ended", slog.Uint64("requests", s.served.Load()), slog.Uint64("direct_io", s.direct.Load()))
}

// fuseDeviceFd finds the /dev/fuse descriptor go-fuse opened for the mount
// (it does not export it); the process opens no other.
func fuseDeviceFd() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1, err
	}
	found := -1
	for _, e := range ents {
		if t, _ := os.Readlink("/proc/self/fd/" + e.Name()); t == "/dev/fuse" {
			if found >= 0 {
				return -1, errors.New("more than one /dev/fuse descriptor open")
			}
			found, _ = strconv.Atoi(e.Name())
		}
	}
	if found < 0 {
		return -1, errors.New("no /dev/fuse descriptor open")
	}
	return found, nil
}

// possibleCPUs is the kernel's num_possible_cpus(): the ring has a queue
// for each, and is used only once every queue has an entry.
func possibleCPUs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, err
	}
	return countCPUs(string(b))
}

// countCPUs counts the CPUs of a list such as "0-3,8".
func countCPUs(list string) (int, error) {
	n := 0
	for _, r := range strings.Split(strings.TrimSpace(list), ",") {
		first, last, isRange := strings.Cut(r, "-")
		if !isRange {
			last = first
		}
		lo, err1 := strconv.Atoi(first)
		hi, err2 := strconv.Atoi(last)
		if err1 != nil || err2 != nil || lo < 0 || hi < lo {
			return 0, fmt.Errorf("cannot parse the CPU list %q", list)
		}
		n += hi - lo + 1
	}
	return n, nil
}

func (s *ringServer) runQueue(qid int, errs chan<- error) {
	defer s.wg.Done()
	// The ring's completion work runs on the thread that submitted, and
	// only while it waits in io_uring_enter: the queue owns its thread.
	// (Pinning it to the queue's CPU, as libfuse does, was measured
	// slower here: fio, the queue and the loop worker then share a CPU.)
	runtime.LockOSThread()

	q, err := s.newQueue(qid)
	if err != nil {
		errs <- fmt.Errorf("io_uring queue %d: %w", qid, err)
		return
	}
	defer q.close()
	errs <- nil
	q.loop()
}

// testFailQueue is fault injection for the integration tests: the queue
// whose number VOLFS_TEST_FAIL_QUEUE names fails to start, as a real
// failure would, after the kernel agreed to io_uring.
var testFailQueue = os.Getenv("VOLFS_TEST_FAIL_QUEUE")

func (s *ringServer) newQueue(qid int) (*ringQueue, error) {
	if testFailQueue == strconv.Itoa(qid) {
		return nil, errors.New("failed on purpose (VOLFS_TEST_FAIL_QUEUE)")
	}
	r, err := uring.New(4 * ringDepth)
	if err != nil {
		return nil, err
	}
	q := &ringQueue{s: s, qid: qid, r: r, efd: -1}
	if err := r.RegisterFiles([]int32{int32(s.fuseFd)}); err != nil {
		q.close()
		return nil, err
	}
	if q.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		q.close()
		return nil, err
	}
	// Headers, iovecs and payloads live outside the Go heap: the
	// kernel writes into them at any time.
	const hdrStride = 512
	small, err := unix.Mmap(-1, 0, ringDepth*hdrStride+8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		q.close()
		return nil, err
	}
	big, err := unix.Mmap(-1, 0, ringDepth*maxIO, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		unix.Munmap(small)
		q.close()
		return nil, err
	}
	_ = unix.Madvise(big, unix.MADV_HUGEPAGE)
	q.wake = small[ringDepth*hdrStride:]
	q.ents = make([]ringEnt, ringDepth)
	for i := range q.ents {
		e := &q.ents[i]
		e.hdr = small[i*hdrStride : i*hdrStride+ringHdrSize]
		e.payload = big[i*maxIO : (i+1)*maxIO : (i+1)*maxIO]
		e.iov = (*[2]unix.Iovec)(unsafe.Pointer(&small[i*hdrStride+ringHdrSize]))
		e.iov[0].Base, e.iov[0].Len = &e.hdr[0], ringHdrSize
		e.iov[1].Base, e.iov[1].Len = &e.payload[0], maxIO
		q.fuseCmd(i, cmdRegister, 0)
	}
	q.live = ringDepth
	q.armWake()
	if err := r.SubmitAndWait(0); err != nil {
		q.close()
		return nil, err
	}
	return q, nil
}

func (q *ringQueue) close() {
	if q.efd >= 0 {
		unix.Close(q.efd)
	}
	q.r.Close()
	// The buffers stay mapped: the kernel may still hold a request's
	// pages until the connection's teardown has finished; the process
	// reclaims them when the mount's server exits.
}

// sqe returns a submission entry, submitting what is queued if full.
func (q *ringQueue) sqe() *uring.SQE {
	for {
		if s := q.r.SQE(); s != nil {
			return s
		}
		if err := q.r.SubmitAndWait(0); err != nil {
			q.s.log.Error("io_uring submit", slog.Int("queue", q.qid), slog.Any("err", err))
		}
	}
}

func userData(kind, i int) uint64 { return uint64(kind)<<32 | uint64(i) }

// fuseCmd registers entry i, or commits its reply and fetches the next.
func (q *ringQueue) fuseCmd(i int, op uint32, commitID uint64) {
	e := &q.ents[i]
	s := q.sqe()
	s.Opcode = uring.OpUringCmd
	s.Flags = uring.SqeFixedFile
	s.Fd = 0
	s.Off = uint64(op)
	s.Addr = uint64(uintptr(unsafe.Pointer(e.iov)))
	s.Len = 2
	s.UserData = userData(kindFuse, i)
	*(*cmdReq)(unsafe.Pointer(&s.Cmd[0])) = cmdReq{CommitID: commitID, Qid: uint16(q.qid)}
}

func (q *ringQueue) armWake() {
	s := q.sqe()
	s.Opcode = uring.OpRead
	s.Fd = int32(q.efd)
	s.Addr = uint64(uintptr(unsafe.Pointer(&q.wake[0])))
	s.Len = 8
	s.UserData = userData(kindWake, 0)
}

func (q *ringQueue) loop() {
	for q.live > 0 {
		if q.inDevice > 0 && q.inDevice <= spinMaxInFlight && q.devLatency < spinIfUnder && q.spin() {
			q.r.Completions(q.complete)
			continue
		}
		if err := q.r.SubmitAndWait(1); err != nil {
			q.s.log.Error("io_uring wait; the queue stops", slog.Int("queue", q.qid), slog.Any("err", err))
			return
		}
		q.r.Completions(q.complete)
	}
}

// spin polls for up to spinFor when few device operations are in flight
// (a queue depth of one or two) and the device usually completes within
// that: sleeping until it does costs the queue's thread a wake-up, about
// 10 µs on these machines (measured on a tmpfs-backed loop device: QD1
// mean 34-42 µs with the spin, 53-62 µs without, 26-30 µs raw). A slower
// device (a disk) is never waited for this way.
func (q *ringQueue) spin() bool {
	deadline := time.Now().Add(spinFor)
	for {
		if err := q.r.Poll(); err != nil {
			return false
		}
		if q.r.Ready() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

const (
	spinMaxInFlight = 2
	spinFor         = 30 * time.Microsecond
	// The moving average counts from submission to the completion's
	// handling, a sleeping queue's wake-up included.
	spinIfUnder = 50 * time.Microsecond
)

func (q *ringQueue) complete(c *uring.CQE) {
	i := int(uint32(c.UserData))
	switch c.UserData >> 32 {
	case kindFuse:
		if c.Res < 0 {
			// The connection is going away (unmount) or the entry was
			// refused; either way it is no longer the kernel's.
			q.live--
			if errno := syscall.Errno(-c.Res); errno != syscall.ENOTCONN && errno != syscall.ECONNABORTED && errno != syscall.ECANCELED {
				q.s.log.Warn("io_uring entry ended", slog.Int("queue", q.qid), slog.Any("err", errno))
			}
			return
		}
		if !q.startDirect(i) {
			go q.serve(i)
		}
	case kindDev:
		q.directDone(i, c.Res)
	case kindWake:
		q.mu.Lock()
		done := q.done
		q.done = nil
		q.mu.Unlock()
		for _, i := range done {
			q.commit(i)
		}
		q.armWake()
	}
}

// commit sends entry i's reply (header and payload_sz already set).
func (q *ringQueue) commit(i int) {
	q.s.served.Add(1)
	q.fuseCmd(i, cmdCommitAndFetch, q.ents[i].inOut().CommitID)
}

// serve answers entry i's request through go-fuse's protocol code, in a
// goroutine of its own: it may block (an lvm command takes a second).
func (q *ringQueue) serve(i int) {
	e := &q.ents[i]
	h := e.in()
	psz := int(e.inOut().PayloadSz)
	argLen := int(h.Length) - inHeaderSize - psz
	if argLen < 0 || argLen > ringInOutOff-ringOpInOff || psz > len(e.payload) {
		q.s.log.Error("malformed request on the io_uring queue", slog.Int("opcode", int(h.Opcode)),
			slog.Int("len", int(h.Length)), slog.Int("payload", psz))
		e.setReply(syscall.EIO, 0)
		q.finished(i)
		return
	}
	payload := e.payload[:psz]
	if h.Opcode != opWrite && psz > 0 {
		// Names and xattr values: the reply goes into the same buffer.
		payload = append([]byte(nil), payload...)
	}
	in := [][]byte{e.hdr[:inHeaderSize], e.hdr[ringOpInOff : ringOpInOff+argLen], payload}
	out := [][]byte{e.hdr[:outHeaderSize], e.payload}
	if n, st := q.s.ps.HandleRequest(in, out); n >= outHeaderSize {
		e.inOut().PayloadSz = uint32(n - outHeaderSize)
	} else {
		// No reply written (the request header is intact): a parse
		// failure, or a request that needs none; the kernel still
		// expects the entry back.
		errno := syscall.Errno(0)
		if !st.Ok() {
			errno = syscall.Errno(st)
		}
		e.setReply(errno, 0)
	}
	q.finished(i)
}

// finished hands entry i, its reply written, back to the queue's thread
// for its commit.
func (q *ringQueue) finished(i int) {
	q.mu.Lock()
	first := len(q.done) == 0
	q.done = append(q.done, i)
	q.mu.Unlock()
	if first {
		one := [8]byte{1}
		unix.Write(q.efd, one[:])
	}
}

// startDirect starts entry i's request as a device operation on the ring
// if the handle's code would do it with one call on the device: a READ or
// WRITE of an open image inside its size and aligned to the device's block
// size (one O_DIRECT call), or an fdatasync (the device's flush). Anything
// else (the end of the file, growth, unaligned bytes, an fsync that
// persists attributes) takes the handle's own code.
func (q *ringQueue) startDirect(i int) bool {
	e := &q.ents[i]
	h := e.in()
	if h.Opcode != opRead && h.Opcode != opWrite && h.Opcode != opFsync {
		return false
	}
	n := q.s.root.openImage(h.NodeId)
	if n == nil {
		return false
	}
	d := n.dev.Load()
	if d == nil {
		return false
	}
	var op uint8
	var off, size int64
	switch h.Opcode {
	case opFsync:
		// fuse_fsync_in: fh, fsync_flags.
		if *(*uint32)(unsafe.Pointer(&e.hdr[ringOpInOff+8]))&fsyncDataOnly == 0 {
			return false
		}
		op = uring.OpFsync
	case opRead:
		a := e.args()
		off, size = int64(a.Offset), int64(a.Size)
		end := n.size.Load()
		if off < 0 || off >= end {
			return false
		}
		size = min(size, end-off)
		op = uring.OpRead
	case opWrite:
		a := e.args()
		off, size = int64(a.Offset), int64(a.Size)
		if off < 0 || off+size > n.size.Load() || int64(e.inOut().PayloadSz) != size {
			return false
		}
		op = uring.OpWrite
	}
	if op != uring.OpFsync && (size == 0 || size > maxIO || !d.aligned(off, int(size))) {
		return false
	}
	if !d.acquire() {
		return false
	}
	e.dev, e.img, e.started = d, n, time.Now()
	q.inDevice++
	s := q.sqe()
	s.Opcode = op
	s.Fd = d.fd
	if op == uring.OpFsync {
		// The direct fd flushes the whole block device, as the buffered
		// one does in the handle's Fsync: its dirty page cache, then the
		// device's write cache.
		s.OpFlags = uring.FsyncDatasync
	} else {
		s.Addr = uint64(uintptr(unsafe.Pointer(&e.payload[0])))
		s.Len = uint32(size)
		s.Off = uint64(off)
	}
	s.UserData = userData(kindDev, i)
	return true
}

// directDone replies to a fast-path request whose device operation
// completed.
func (q *ringQueue) directDone(i int, res int32) {
	e := &q.ents[i]
	q.inDevice--
	now := time.Now()
	q.devLatency += (now.Sub(e.started) - q.devLatency) / 8
	e.dev.release()
	img := e.img
	e.dev, e.img = nil, nil
	if res < 0 {
		// Let the handle's code redo it: it maps and logs the error
		// as every other request's.
		go q.serve(i)
		return
	}
	n := 0
	switch e.in().Opcode {
	case opRead:
		n = int(res)
	case opWrite:
		img.wtime.Store(now.UnixNano())
		img.written.Store(true)
		*(*[2]uint32)(unsafe.Pointer(&e.payload[0])) = [2]uint32{uint32(res), 0} // fuse_write_out
		n = 8
	case opFsync:
		// fdatasync persists the size too if it changed (Fsync): then,
		// or if the image is busy, the handle's code does the rest (the
		// device is clean by now, its flush is cheap).
		if !img.mu.TryLock() {
			go q.serve(i)
			return
		}
		changed := img.sizeChangedLocked()
		img.mu.Unlock()
		if changed {
			go q.serve(i)
			return
		}
	}
	q.s.direct.Add(1)
	q.s.root.stats.ringDone(e.in().Opcode, e.started, res)
	e.setReply(0, n)
	q.commit(i)
}
