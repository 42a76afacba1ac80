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

	"github.com/volfs/volfs/internal/fusectl"
	"github.com/volfs/volfs/internal/mountinfo"
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
//
// INTERRUPT does not reach the requests the ring serves: the kernel sends
// it through /dev/fuse, where go-fuse looks the request up among its own
// (it is not there), answers EAGAIN and the kernel drops it (the request is
// not on /dev/fuse's processing list either; ENOENT, which go-fuse does not
// log). go-fuse keeps a second protocol server's requests to itself and
// has no hook to forward an INTERRUPT, so delivering it would need a
// change to go-fuse. It is harmless for volfs: the interrupted process
// still gets its answer, when the operation ends. What can take long here
// is an lvm command (create, grow, rename, remove; seconds) or a device
// flush; on /dev/fuse an INTERRUPT stops a waiting lvm command with
// SIGINT (volmap/lvm's runner), which only turns a slow success into an
// error, and device I/O is not interruptible anyway. A killed process
// whose request the kernel has already sent waits for the answer either
// way (the kernel's request_wait_answer).

// ringHeader is struct fuse_uring_req_header (<linux/fuse.h>): the
// request's fuse_in_header (the reply's fuse_out_header goes over it), the
// operation's own header, and the entry's in/out fields.
type ringHeader struct {
	InOut    [128]byte
	OpIn     [128]byte
	EntInOut entInOut
}

// Layout of struct fuse_uring_req_header and its commands (<linux/fuse.h>).
const (
	ringHdrSize   = int(unsafe.Sizeof(ringHeader{}))
	ringOpInOff   = int(unsafe.Offsetof(ringHeader{}.OpIn))
	ringInOutOff  = int(unsafe.Offsetof(ringHeader{}.EntInOut))
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

// fsyncArgs is fuse_fsync_in.
type fsyncArgs struct {
	Fh         uint64
	FsyncFlags uint32
	Padding    uint32
}

type outHeader struct {
	Len    uint32
	Error  int32
	Unique uint64
}

// The kernel's layouts, checked at compile time (an array type [N]byte is
// assignable only to [N]byte): the sizes <linux/fuse.h> gives them.
var (
	_ [288]byte           = [ringHdrSize]byte{}                                             // fuse_uring_req_header
	_ [128]byte           = [ringOpInOff]byte{}                                             // its op_in
	_ [256]byte           = [ringInOutOff]byte{}                                            // its ring_ent_in_out
	_ [32]byte            = [unsafe.Sizeof(entInOut{})]byte{}                               // fuse_uring_ent_in_out
	_ [24]byte            = [unsafe.Sizeof(cmdReq{})]byte{}                                 // fuse_uring_cmd_req
	_ [40]byte            = [unsafe.Sizeof(ioArgs{})]byte{}                                 // fuse_read_in, fuse_write_in
	_ [16]byte            = [unsafe.Sizeof(fsyncArgs{})]byte{}                              // fuse_fsync_in
	_ [8]byte             = [unsafe.Sizeof(writeOut{})]byte{}                               // fuse_write_out
	_ [inHeaderSize]byte  = [unsafe.Sizeof(fuse.InHeader{})]byte{}                          // fuse_in_header
	_ [outHeaderSize]byte = [unsafe.Sizeof(outHeader{})]byte{}                              // fuse_out_header
	_ [16]byte            = [unsafe.Sizeof(unix.Iovec{})]byte{}                             // struct iovec
	_                     = [uintptr(len(uring.SQE{}.Cmd)) - unsafe.Sizeof(cmdReq{})]byte{} // the command fits the SQE128 area
)

// writeOut is fuse_write_out.
type writeOut struct {
	Size    uint32
	Padding uint32
}

// ringServer is the set of queues of one mount.
type ringServer struct {
	root   *Root
	ps     *fuse.ProtocolServer
	log    *slog.Logger
	fuseFd int
	dir    string // the mount point, to find the connection to abort
	wg     sync.WaitGroup
	abortd sync.Once

	served  atomic.Uint64 // requests answered through the ring
	direct  atomic.Uint64 // of which the device I/O was a ring operation
	rearmed atomic.Uint64 // entries registered again after an error
	entries atomic.Int64  // entries the queues still had when the connection ended
	// How the queues waited (added up when each ends): polls that found
	// a completion, polls that did not, waits holding the P, sleeps.
	polled, pollMissed, waited, slept atomic.Uint64
	flushedInline                     atomic.Uint64 // fdatasyncs a queue made on its thread
}

// ringQueue is one queue: its ring, entries and the thread that owns them.
type ringQueue struct {
	s          *ringServer
	qid        int
	r          *uring.Ring
	ents       []ringEnt
	live       int           // entries not ended: the kernel's, or holding a request
	tornDown   int           // entries ended because the connection went away
	inDevice   int           // fast-path device operations in flight
	devLatency time.Duration // moving average of their durations
	// lastWork is when the queue last handled a completion; idleSince
	// when it last had nothing in flight on the device (zero while it
	// has), and reqGap the moving average of how long it then waited for
	// the next request (see poll).
	lastWork  time.Time
	idleSince time.Time
	reqGap    time.Duration
	// now is when the completions being handled were taken: one clock
	// read for all (a read costs about 0.3 µs on these machines).
	now time.Time
	// the account of the waits, for ringServer
	polled, pollMissed, waited, slept uint64
	// err is why the queue cannot go on (its ring refuses submissions,
	// or every entry failed): its thread stops and the connection is
	// aborted (ringServer.abort).
	err error

	efd  int
	wake []byte // eventfd read buffer (8 bytes, not Go memory)

	mu      sync.Mutex
	done    []int // entries whose reply a worker finished
	stopped bool  // efd is closed: workers hand nothing back

	fault ringFault // test-only fault injection
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
	fails   int // errors in a row the kernel ended its commands with
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
func startRing(srv *fuse.Server, rawFS fuse.RawFileSystem, mo *fuse.MountOptions, root *Root, dir string) *ringServer {
	s := &ringServer{root: root, log: root.log, fuseFd: -1, dir: dir}
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
	// The library does not change GOMAXPROCS (the program's main does,
	// from RingProcs): it only says when it is too low.
	if have, need := runtime.GOMAXPROCS(0), nq+runtime.NumCPU(); have < need {
		s.log.Warn("GOMAXPROCS is lower than the io_uring queues need: each queue's thread keeps its P while it waits, "+
			"other goroutines then wait for the runtime to preempt it", slog.Int("gomaxprocs", have), slog.Int("want", need))
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
	s.log.Info("io_uring queues ended", slog.Uint64("requests", s.served.Load()), slog.Uint64("direct_io", s.direct.Load()),
		slog.Int64("entries", s.entries.Load()), slog.Uint64("rearmed", s.rearmed.Load()),
		slog.Uint64("polled", s.polled.Load()), slog.Uint64("poll_missed", s.pollMissed.Load()),
		slog.Uint64("waited", s.waited.Load()), slog.Uint64("slept", s.slept.Load()),
		slog.Uint64("flushed_inline", s.flushedInline.Load()))
}

// RingProcs is the GOMAXPROCS a server needs to serve through FUSE over
// io_uring: each queue (one per possible CPU) keeps its thread's P while
// it waits in the kernel (uring.SubmitAndWait), and the rest of the server
// needs Ps besides. The program's main sets it; this package never
// changes GOMAXPROCS. 0 if the number of CPUs is unknown.
func RingProcs() int {
	nq, err := possibleCPUs()
	if err != nil {
		return 0
	}
	return nq + runtime.NumCPU()
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
	errs <- nil
	q.loop()
	if q.err != nil {
		s.abort(qid, q.err)
	}
	q.close()
	s.entries.Add(int64(q.tornDown))
	s.polled.Add(q.polled)
	s.pollMissed.Add(q.pollMissed)
	s.waited.Add(q.waited)
	s.slept.Add(q.slept)
}

// abort ends the FUSE connection after queue qid failed. Once the ring
// runs, the kernel never sends a request back to /dev/fuse, and it picks
// the queue by the CPU the requesting thread runs on: without this queue,
// requests from its CPU would wait forever (uninterruptibly once sent).
// Aborted, every request ends with ENOTCONN, go-fuse's loop ends and the
// mount point answers ENOTCONN until it is unmounted: loud, and mounting
// again recovers.
func (s *ringServer) abort(qid int, err error) {
	s.abortd.Do(func() {
		how := "through fusectl"
		// A stat of the mount point would be a request to this very
		// server: the mount is found in /proc/self/mountinfo.
		var aerr error
		if m, ok := mountinfo.FindFUSE(s.dir); ok {
			aerr = fusectl.Abort(m, false)
		} else {
			aerr = fmt.Errorf("no FUSE mount at %s in /proc/self/mountinfo", s.dir)
		}
		if aerr != nil {
			// No fusectl (/sys/fs/fuse/connections not mounted): a
			// forced unmount aborts the connection first (the kernel's
			// fuse_umount_begin), then unmounts unless the mount is busy.
			ferr := unix.Unmount(s.dir, unix.MNT_FORCE)
			if ferr == nil || ferr == unix.EBUSY {
				aerr, how = nil, "by a forced unmount"
			} else {
				aerr = errors.Join(aerr, ferr)
			}
		}
		if aerr != nil {
			s.log.Error("io_uring queue failed and the FUSE connection cannot be aborted: requests from its CPU wait "+
				"until the mount is aborted (volfs umount --force)", slog.Int("queue", qid), slog.Any("err", err),
				slog.Any("abort_err", aerr))
			return
		}
		s.log.Error("io_uring queue failed; aborted the FUSE connection (the kernel cannot move a running mount back "+
			"to /dev/fuse): unmount and mount again, with --io-uring=false to serve without io_uring",
			slog.Int("queue", qid), slog.Any("err", err), slog.String("how", how))
	})
}

// testFailQueue is fault injection for the integration tests: the queue
// whose number VOLFS_TEST_FAIL_QUEUE names fails to start, as a real
// failure would, after the kernel agreed to io_uring.
var testFailQueue = os.Getenv("VOLFS_TEST_FAIL_QUEUE")

// testFailRing is fault injection for the integration tests, a
// comma-separated list in VOLFS_TEST_FAIL_RING:
//   - "entries": each queue registers only its first entry; every other
//     one starts with an error completion (a NOP that completes with EIO,
//     as a refused registration or commit would) and must be registered
//     again for the queue to keep its depth.
//   - "submit": once the queues have answered failSubmitAfter requests,
//     their io_uring_enter fails, as a broken ring's would.
var testFailRing = os.Getenv("VOLFS_TEST_FAIL_RING")

const failSubmitAfter = 200

type ringFault struct {
	entries bool
	submit  bool
}

func parseRingFault(s string) ringFault {
	var f ringFault
	for _, w := range strings.Split(s, ",") {
		switch w {
		case "entries":
			f.entries = true
		case "submit":
			f.submit = true
		}
	}
	return f
}

func (s *ringServer) newQueue(qid int) (*ringQueue, error) {
	if testFailQueue == strconv.Itoa(qid) {
		return nil, errors.New("failed on purpose (VOLFS_TEST_FAIL_QUEUE)")
	}
	r, err := uring.New(4 * ringDepth)
	if err != nil {
		return nil, err
	}
	q := &ringQueue{s: s, qid: qid, r: r, efd: -1, fault: parseRingFault(testFailRing)}
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
		e.iov[0].Base, e.iov[0].Len = &e.hdr[0], uint64(ringHdrSize)
		e.iov[1].Base, e.iov[1].Len = &e.payload[0], maxIO
		if i > 0 && q.fault.entries {
			q.injectError(i, syscall.EIO)
			continue
		}
		q.fuseCmd(i, cmdRegister, 0)
	}
	q.live = ringDepth
	q.armWake()
	if err := q.submit(0); err != nil {
		q.close()
		return nil, err
	}
	if q.err != nil {
		err := q.err
		q.close()
		return nil, err
	}
	return q, nil
}

// close ends the queue once its thread has stopped.
func (q *ringQueue) close() {
	// Workers still answering requests hand their entries back through
	// the eventfd: from now on they drop them instead, so nothing is
	// written to a closed descriptor whose number another file (a
	// device) may have by then.
	q.mu.Lock()
	q.stopped = true
	q.done = nil
	if q.efd >= 0 {
		unix.Close(q.efd)
		q.efd = -1
	}
	q.mu.Unlock()
	q.r.Close()
	// Device operations a failed queue left in flight: the kernel holds
	// its own reference to their files until it has finished or
	// cancelled them, so the device may close.
	for i := range q.ents {
		q.endDevice(i)
	}
	// The buffers stay mapped: the kernel may still hold a request's
	// pages until the connection's teardown has finished, and workers
	// may still be answering into them; the process reclaims them when
	// the mount's server exits.
}

// sqe returns a submission entry, submitting what is queued while the
// submission queue is full. It returns nil once the queue has failed:
// the ring refuses submissions, or the queue stays full (its completions,
// which would let it drain, are this thread's own work).
func (q *ringQueue) sqe() *uring.SQE {
	for try := 0; q.err == nil; try++ {
		if s := q.r.SQE(); s != nil {
			return s
		}
		if try == sqeTries {
			q.fail(fmt.Errorf("the io_uring submission queue stays full after %d submissions", sqeTries))
			break
		}
		if try > 0 {
			// EAGAIN or EBUSY from the kernel: give it a moment.
			time.Sleep(time.Millisecond)
		}
		if err := q.submit(0); err != nil {
			q.fail(err)
		}
	}
	return nil
}

// sqeTries bounds sqe's submissions (about 0.1 s): at most ringDepth+1
// operations of a queue are ever in flight, so a full submission queue of
// 4*ringDepth means the kernel takes none.
const sqeTries = 100

// fail records why the queue cannot go on (the first reason); its thread
// stops at the next turn of its loop and aborts the connection.
func (q *ringQueue) fail(err error) {
	if q.err == nil {
		q.err = err
	}
}

// submit is the ring's SubmitAndWait, where the tests' fault injection
// can make it fail.
func (q *ringQueue) submit(wait uint32) error {
	if q.fault.submit && q.s.served.Load() >= failSubmitAfter {
		return errors.New("io_uring_enter failed on purpose (VOLFS_TEST_FAIL_RING=submit)")
	}
	return q.r.SubmitAndWait(wait)
}

// injectError makes entry i's next completion an error, as if the kernel
// had refused its command (VOLFS_TEST_FAIL_RING=entries).
func (q *ringQueue) injectError(i int, errno syscall.Errno) {
	s := q.sqe()
	if s == nil {
		return
	}
	res := -int32(errno)
	s.Opcode = uring.OpNop
	s.OpFlags = uring.NopInjectResult
	s.Len = uint32(res)
	s.UserData = userData(kindFuse, i)
}

func userData(kind, i int) uint64 { return uint64(kind)<<32 | uint64(i) }

// fuseCmd registers entry i, or commits its reply and fetches the next.
func (q *ringQueue) fuseCmd(i int, op uint32, commitID uint64) {
	e := &q.ents[i]
	s := q.sqe()
	if s == nil {
		return // the queue failed: the abort ends the entry's request
	}
	s.Opcode = uring.OpUringCmd
	s.Flags = uring.SqeFixedFile
	s.Fd = 0
	s.Off = uint64(op)
	s.Addr = uint64(uintptr(unsafe.Pointer(e.iov)))
	// e.iov is not Go memory (newQueue maps it): its address may be kept
	// as an integer.
	s.Len = 2
	s.UserData = userData(kindFuse, i)
	*(*cmdReq)(unsafe.Pointer(&s.Cmd[0])) = cmdReq{CommitID: commitID, Qid: uint16(q.qid)}
}

func (q *ringQueue) armWake() {
	s := q.sqe()
	if s == nil {
		return
	}
	s.Opcode = uring.OpRead
	s.Fd = int32(q.efd)
	s.Addr = uint64(uintptr(unsafe.Pointer(&q.wake[0])))
	s.Len = 8
	s.UserData = userData(kindWake, 0)
}

// loop serves until every entry has ended or the queue has failed.
func (q *ringQueue) loop() {
	for q.live > 0 && q.err == nil {
		if !q.poll() {
			if err := q.wait(); err != nil {
				q.fail(err)
				break
			}
		}
		if !q.r.Ready() {
			continue
		}
		q.now = time.Now()
		q.r.Completions(q.complete)
		q.lastWork = q.now
		if q.inDevice == 0 && q.idleSince.IsZero() {
			q.idleSince = q.now
		}
	}
	if q.err == nil && q.tornDown == 0 {
		q.fail(errors.New("every entry of the queue was refused"))
	}
}

// poll waits for the next completion without sleeping, when one is
// likely soon: sleeping until it comes costs the queue's thread a
// wake-up, about 10 µs on these machines, and the requester waits for it.
//   - A fast device's operation: when few are in flight (a queue depth of
//     one or two) and the device usually completes within spinFor (a
//     tmpfs-backed loop device: QD1 mean 34-42 µs with this, 53-62 µs
//     without, 26-30 µs raw). A slower device (a disk) is never waited for
//     this way.
//   - The next request: when the queue has nothing in flight and requests
//     have been arriving within pollFor of that (a program doing I/O at
//     queue depth 1 sends its next request a few µs after the reply).
//     Sparser requests stop it by themselves (reqGap), and an idle queue
//     polls once, for pollFor.
//
// It reports whether a completion is there.
func (q *ringQueue) poll() bool {
	var d time.Duration
	switch {
	case q.inDevice > 0 && q.inDevice <= spinMaxInFlight && q.devLatency < spinIfUnder:
		d = spinFor
	case q.inDevice == 0 && q.reqGap < pollFor && time.Since(q.lastWork) < pollFor:
		d = pollFor
	default:
		return false
	}
	if q.fault.submit && q.s.served.Load() >= failSubmitAfter {
		return false // submit fails for the tests
	}
	// Submit what is queued (replies, device operations) and take what
	// is there; then watch the ring's flags for completion work, without
	// a system call until there is some.
	if err := q.r.Poll(); err != nil {
		return false
	}
	deadline := time.Now().Add(d)
	for n := 0; !q.r.Ready(); n++ {
		if q.r.WorkPending() {
			if err := q.r.Poll(); err != nil {
				return false
			}
			continue
		}
		if n%16 == 15 && time.Now().After(deadline) {
			q.pollMissed++
			return false
		}
	}
	q.polled++
	return true
}

const (
	spinMaxInFlight = 2
	spinFor         = 30 * time.Microsecond
	// The moving average counts from submission to the completion's
	// handling, a sleeping queue's wake-up included.
	spinIfUnder = 50 * time.Microsecond
	pollFor     = 50 * time.Microsecond
	// sleepAfter is how long a queue with nothing in flight waits holding
	// its P (a wake-up from that wait is cheaper) before it sleeps
	// without one (Ring.Sleep): an idle server uses no CPU.
	sleepAfter = 10 * time.Millisecond
)

// wait submits what is queued and waits for a completion. A queue idle
// for sleepAfter sleeps as an ordinary system call: the runtime then
// takes its P, stops preempting it every 10 ms, and an idle server costs
// nothing (measured before: 800 wake-ups and 2.7% of a CPU a second).
func (q *ringQueue) wait() error {
	if q.inDevice == 0 && time.Since(q.lastWork) > sleepAfter {
		if q.fault.submit && q.s.served.Load() >= failSubmitAfter {
			return errors.New("io_uring_enter failed on purpose (VOLFS_TEST_FAIL_RING=submit)")
		}
		q.slept++
		return q.r.Sleep()
	}
	q.waited++
	return q.submit(1)
}

func (q *ringQueue) complete(c *uring.CQE) {
	i := int(uint32(c.UserData))
	kind := c.UserData >> 32
	if q.err != nil {
		// The queue has failed and the connection is being aborted:
		// only the device references are settled.
		if kind == kindDev {
			q.inDevice--
			q.endDevice(i)
		}
		return
	}
	switch kind {
	case kindFuse:
		if c.Res < 0 {
			q.entryError(i, syscall.Errno(-c.Res))
			return
		}
		q.ents[i].fails = 0
		if !q.idleSince.IsZero() {
			// Waited from idle: capped, so that one long pause does
			// not stop the polling for many requests.
			gap := min(q.now.Sub(q.idleSince), 2*pollFor)
			q.reqGap += (gap - q.reqGap) / 4
			q.idleSince = time.Time{}
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

// entryError handles a FUSE command of entry i that the kernel ended with
// an error. At the connection's end (unmount, abort, the ring's thread
// exiting) the entry is done. Any other error (a registration or commit
// the kernel refused) leaves the kernel without the entry: it is
// registered again, or the queue would shrink with each such error until
// requests from its CPU wait forever. An entry refused maxEntryFails times
// in a row is given up, loudly; a queue left without entries fails.
func (q *ringQueue) entryError(i int, errno syscall.Errno) {
	e := &q.ents[i]
	switch errno {
	case syscall.ENOTCONN, syscall.ECONNABORTED, syscall.ECANCELED:
		q.live--
		q.tornDown++
		return
	}
	e.fails++
	if e.fails > maxEntryFails {
		q.live--
		q.s.log.Error("io_uring entry refused again and again; the queue goes on without it", slog.Int("queue", q.qid),
			slog.Int("entry", i), slog.Any("err", errno), slog.Int("entries_left", q.live))
		return
	}
	q.s.log.Warn("io_uring entry ended with an error; registering it again", slog.Int("queue", q.qid),
		slog.Int("entry", i), slog.Any("err", errno))
	q.s.rearmed.Add(1)
	q.fuseCmd(i, cmdRegister, 0)
}

const maxEntryFails = 3

// endDevice drops entry i's device reference, if it holds one.
func (q *ringQueue) endDevice(i int) *Image {
	e := &q.ents[i]
	img := e.img
	if e.dev != nil {
		e.dev.release()
	}
	e.dev, e.img = nil, nil
	return img
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
// The eventfd is written under q.mu, which close takes to close it.
func (q *ringQueue) finished(i int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return // the queue has ended; so has the connection or its ring
	}
	q.done = append(q.done, i)
	if len(q.done) == 1 {
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
		if (*fsyncArgs)(unsafe.Pointer(&e.hdr[ringOpInOff])).FsyncFlags&fsyncDataOnly == 0 || !n.ringMaySync() {
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
	if op == uring.OpWrite && d.zeroWrite(e.payload[:size], off) {
		// Zeros over whole chunks of a sparse volume: the handle's code
		// unmaps them instead of allocating them.
		return false
	}
	if !d.acquire() {
		return false
	}
	if op == uring.OpFsync && d.flushInline() {
		// The flush on this thread (see flushInline): the same call
		// on the same fd as the ring operation would make, without
		// the hand-off to an io-wq worker and back.
		e.dev, e.img, e.started = d, n, time.Now()
		q.inDevice++
		q.s.flushedInline.Add(1)
		res := d.flush()
		q.now = time.Now() // for the flush's duration
		q.directDone(i, res)
		return true
	}
	s := q.sqe()
	if s == nil {
		d.release()
		return true // the queue failed: the abort ends the request
	}
	e.dev, e.img, e.started = d, n, q.now
	q.inDevice++
	s.Opcode = op
	s.Fd = d.fd
	if op == uring.OpFsync {
		// The fd the handle's Fsync flushes: its dirty page cache, then
		// the device's write cache. The kernel reports a write-back
		// error once per fd, and volfs reports it to each handle (errSeq).
		s.Fd = d.syncFd
		s.OpFlags = uring.FsyncDatasync
	} else {
		// The payload is not Go memory (newQueue maps it).
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
	now := q.now
	q.devLatency += (now.Sub(e.started) - q.devLatency) / 8
	if e.in().Opcode == opFsync {
		e.dev.flushTook(now.Sub(e.started))
	}
	if e.in().Opcode == opWrite {
		// Data now (even if it failed: the handle's redo writes it), in
		// the mapping before the reply.
		a := e.args()
		e.dev.alloc.wrote(int64(a.Offset), int64(a.Size))
	}
	img := q.endDevice(i)
	if res < 0 {
		if e.in().Opcode == opFsync {
			// The kernel told this fd once; the handle's redo would
			// flush cleanly, so the error is recorded first.
			img.wbErr.set(syscall.Errno(-res))
		}
		// Let the handle's code redo it: it maps and logs the error
		// as every other request's.
		go q.serve(i)
		return
	}
	n := 0
	switch e.in().Opcode {
	case opRead:
		n = int(res)
		if a := e.args(); uint32(n) < a.Size && int64(a.Offset)+int64(n) < img.size.Load() {
			img.shortRead() // the device may have shrunk
		}
	case opWrite:
		img.wtime.Store(now.UnixNano())
		img.written.Store(true)
		*(*writeOut)(unsafe.Pointer(&e.payload[0])) = writeOut{Size: uint32(res)}
		n = 8
	case opFsync:
		// fdatasync persists the size too if it changed (Fsync): then,
		// or if the image is busy, the handle's code does the rest (the
		// device is clean by now, its flush is cheap).
		if !img.ringMaySync() || !img.mu.TryLock() {
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
	q.s.root.stats.ringRecord(e.in().Opcode, now.Sub(e.started), res)
	e.setReply(0, n)
	q.commit(i)
}
