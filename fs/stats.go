package fs

import (
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Op is a kind of FUSE request, as counted by Stats.
type Op int

// The operations Stats counts; Other is every request not listed.
const (
	OpLookup Op = iota
	OpGetattr
	OpSetattr
	OpOpen
	OpCreate
	OpRead
	OpWrite
	OpFsync
	OpFlush
	OpRelease
	OpUnlink
	OpRename
	OpReaddir
	OpStatfs
	OpFallocate
	OpLseek
	OpCopyFileRange
	OpGetxattr
	OpSetxattr
	OpListxattr
	OpRemovexattr
	OpOther
	NumOps
)

var opNames = [NumOps]string{"lookup", "getattr", "setattr", "open", "create", "read", "write", "fsync",
	"flush", "release", "unlink", "rename", "readdir", "statfs", "fallocate", "lseek", "copy_file_range",
	"getxattr", "setxattr", "listxattr", "removexattr", "other"}

func (o Op) String() string { return opNames[o] }

// LatencyBuckets are the upper bounds, in seconds, of the request duration
// histograms: from a cached read (tens of µs) to an lvm command (seconds).
var LatencyBuckets = [numBuckets]float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
	50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10}

const numBuckets = 18

var bucketNanos = func() (b [numBuckets]int64) {
	for i, s := range LatencyBuckets {
		b[i] = int64(s * 1e9)
	}
	return b
}()

// opStats are one operation's counters. Every field is updated with one
// atomic add: the data path takes no lock and allocates nothing.
type opStats struct {
	requests atomic.Uint64
	errors   atomic.Uint64
	nanos    atomic.Uint64
	// buckets[i] counts requests of at most LatencyBuckets[i] (not
	// cumulative); the last counts the rest.
	buckets [numBuckets + 1]atomic.Uint64
}

// Stats count a mount's requests since it started.
type Stats struct {
	start        time.Time
	ops          [NumOps]opStats
	readBytes    atomic.Uint64
	writtenBytes atomic.Uint64
	// ring is set once the io_uring queues serve the mount.
	ring atomic.Bool
}

// done records one request of op that started at start and answered errno.
func (s *Stats) done(op Op, start time.Time, errno syscall.Errno) {
	s.record(op, time.Since(start), errno)
}

// record counts one request of op that took took.
func (s *Stats) record(op Op, took time.Duration, errno syscall.Errno) {
	o := &s.ops[op]
	o.requests.Add(1)
	d := int64(took)
	o.nanos.Add(uint64(max(d, 0)))
	i := 0
	for i < len(bucketNanos) && d > bucketNanos[i] {
		i++
	}
	o.buckets[i].Add(1)
	if errno != 0 && !expected(op, errno) {
		o.errors.Add(1)
	}
}

// expected reports whether an error is an answer rather than a failure: a
// name that does not exist, an absent xattr or one of a namespace volfs
// does not store (`ls -l` asks for the SELinux label and the POSIX ACL:
// ENOTSUP, see unstoredXattr), a buffer the kernel sizes first, an O_EXCL
// create of an existing name, a request the kernel stops sending once
// told it is not implemented (ENOSYS: statx, ioctl), a request its caller
// withdrew (EINTR: a signal interrupted the program waiting for it, the
// kernel sent FUSE_INTERRUPT, and volfs stopped waiting, as for a ^C of an
// ls that waits for a listing).
func expected(op Op, errno syscall.Errno) bool {
	if errno == syscall.ENOSYS || errno == syscall.EINTR || errno == syscall.ENOTTY && op == OpOther {
		return true
	}
	switch op {
	case OpLookup:
		return errno == syscall.ENOENT
	case OpGetxattr:
		return errno == syscall.ENODATA || errno == syscall.ERANGE || errno == syscall.ENOTSUP
	case OpListxattr:
		return errno == syscall.ENODATA || errno == syscall.ERANGE
	case OpCreate:
		return errno == syscall.EEXIST
	case OpLseek:
		return errno == syscall.ENXIO
	}
	return false
}

// OpCounts is a snapshot of one operation's counters.
type OpCounts struct {
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
	// Seconds is the total time spent answering.
	Seconds float64 `json:"seconds"`
	// Buckets are cumulative counts per LatencyBuckets bound (the
	// Prometheus histogram's); Requests is the +Inf bucket.
	Buckets []uint64 `json:"-"`
}

// StatsSnapshot is Stats at one moment.
type StatsSnapshot struct {
	Start        time.Time           `json:"start"`
	IOURing      bool                `json:"io_uring"`
	ReadBytes    uint64              `json:"read_bytes"`
	WrittenBytes uint64              `json:"written_bytes"`
	Ops          map[string]OpCounts `json:"ops"`
}

// Snapshot reads the counters (each one atomically; together they may be
// a request apart).
func (s *Stats) Snapshot() StatsSnapshot {
	out := StatsSnapshot{Start: s.start, IOURing: s.ring.Load(), ReadBytes: s.readBytes.Load(),
		WrittenBytes: s.writtenBytes.Load(), Ops: map[string]OpCounts{}}
	for op := range NumOps {
		o := &s.ops[op]
		c := OpCounts{Errors: o.errors.Load(), Seconds: float64(o.nanos.Load()) / 1e9,
			Buckets: make([]uint64, len(LatencyBuckets))}
		var cum uint64
		for i := range o.buckets {
			cum += o.buckets[i].Load()
			if i < len(LatencyBuckets) {
				c.Buckets[i] = cum
			}
		}
		c.Requests = cum
		if c.Requests > 0 {
			out.Ops[op.String()] = c
		}
	}
	return out
}

// statsFS counts the requests go-fuse serves (through /dev/fuse, and the
// io_uring queues' requests that take go-fuse's code).
type statsFS struct {
	fuse.RawFileSystem
	st *Stats
}

func errnoOf(s fuse.Status) syscall.Errno {
	if s == fuse.OK {
		return 0
	}
	return syscall.Errno(s)
}

func (f *statsFS) count(op Op, start time.Time, s fuse.Status) fuse.Status {
	f.st.done(op, start, errnoOf(s))
	return s
}

func (f *statsFS) Lookup(c <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	return f.count(OpLookup, t, f.RawFileSystem.Lookup(c, h, name, out))
}

func (f *statsFS) GetAttr(c <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	t := time.Now()
	return f.count(OpGetattr, t, f.RawFileSystem.GetAttr(c, in, out))
}

func (f *statsFS) SetAttr(c <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	t := time.Now()
	return f.count(OpSetattr, t, f.RawFileSystem.SetAttr(c, in, out))
}

func (f *statsFS) Mknod(c <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	return f.count(OpCreate, t, f.RawFileSystem.Mknod(c, in, name, out))
}

func (f *statsFS) Unlink(c <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	t := time.Now()
	return f.count(OpUnlink, t, f.RawFileSystem.Unlink(c, h, name))
}

func (f *statsFS) Rename(c <-chan struct{}, in *fuse.RenameIn, from, to string) fuse.Status {
	t := time.Now()
	return f.count(OpRename, t, f.RawFileSystem.Rename(c, in, from, to))
}

func (f *statsFS) GetXAttr(c <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, s := f.RawFileSystem.GetXAttr(c, h, attr, dest)
	return n, f.count(OpGetxattr, t, s)
}

func (f *statsFS) ListXAttr(c <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, s := f.RawFileSystem.ListXAttr(c, h, dest)
	return n, f.count(OpListxattr, t, s)
}

func (f *statsFS) SetXAttr(c <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	t := time.Now()
	return f.count(OpSetxattr, t, f.RawFileSystem.SetXAttr(c, in, attr, data))
}

func (f *statsFS) RemoveXAttr(c <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	t := time.Now()
	return f.count(OpRemovexattr, t, f.RawFileSystem.RemoveXAttr(c, h, attr))
}

func (f *statsFS) Create(c <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	t := time.Now()
	return f.count(OpCreate, t, f.RawFileSystem.Create(c, in, name, out))
}

func (f *statsFS) Open(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	t := time.Now()
	return f.count(OpOpen, t, f.RawFileSystem.Open(c, in, out))
}

func (f *statsFS) Read(c <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	t := time.Now()
	r, s := f.RawFileSystem.Read(c, in, buf)
	if s == fuse.OK && r != nil {
		f.st.readBytes.Add(uint64(r.Size()))
	}
	return r, f.count(OpRead, t, s)
}

func (f *statsFS) Lseek(c <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	t := time.Now()
	return f.count(OpLseek, t, f.RawFileSystem.Lseek(c, in, out))
}

func (f *statsFS) Release(c <-chan struct{}, in *fuse.ReleaseIn) {
	t := time.Now()
	f.RawFileSystem.Release(c, in)
	f.st.done(OpRelease, t, 0)
}

func (f *statsFS) Write(c <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, s := f.RawFileSystem.Write(c, in, data)
	f.st.writtenBytes.Add(uint64(n))
	return n, f.count(OpWrite, t, s)
}

func (f *statsFS) Writev(c <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	t := time.Now()
	n, s := f.RawFileSystem.Writev(c, in, data)
	f.st.writtenBytes.Add(uint64(n))
	return n, f.count(OpWrite, t, s)
}

func (f *statsFS) CopyFileRange(c <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	t := time.Now()
	n, s := f.RawFileSystem.CopyFileRange(c, in)
	return n, f.count(OpCopyFileRange, t, s)
}

func (f *statsFS) Flush(c <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	t := time.Now()
	return f.count(OpFlush, t, f.RawFileSystem.Flush(c, in))
}

func (f *statsFS) Fsync(c <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	t := time.Now()
	return f.count(OpFsync, t, f.RawFileSystem.Fsync(c, in))
}

func (f *statsFS) Fallocate(c <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	t := time.Now()
	return f.count(OpFallocate, t, f.RawFileSystem.Fallocate(c, in))
}

func (f *statsFS) ReadDir(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	t := time.Now()
	return f.count(OpReaddir, t, f.RawFileSystem.ReadDir(c, in, out))
}

func (f *statsFS) ReadDirPlus(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	t := time.Now()
	return f.count(OpReaddir, t, f.RawFileSystem.ReadDirPlus(c, in, out))
}

func (f *statsFS) StatFs(c <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	t := time.Now()
	return f.count(OpStatfs, t, f.RawFileSystem.StatFs(c, h, out))
}

// ringDone records a READ, WRITE or FSYNC that an io_uring queue served
// itself, res being the device operation's result (bytes or 0).
func (s *Stats) ringDone(opcode uint32, start time.Time, res int32) {
	s.ringRecord(opcode, time.Since(start), res)
}

// ringRecord counts one request the ring served itself that took took.
func (s *Stats) ringRecord(opcode uint32, took time.Duration, res int32) {
	switch opcode {
	case opRead:
		s.readBytes.Add(uint64(res))
		s.record(OpRead, took, 0)
	case opWrite:
		s.writtenBytes.Add(uint64(res))
		s.record(OpWrite, took, 0)
	case opFsync:
		s.record(OpFsync, took, 0)
	}
}

func (f *statsFS) Statx(c <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	t := time.Now()
	return f.count(OpGetattr, t, f.RawFileSystem.Statx(c, in, out))
}

// The requests volfs answers with a refusal or that carry no work of its
// own count as "other".

func (f *statsFS) Access(c <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	t := time.Now()
	return f.count(OpOther, t, f.RawFileSystem.Access(c, in))
}

func (f *statsFS) OpenDir(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	t := time.Now()
	return f.count(OpOther, t, f.RawFileSystem.OpenDir(c, in, out))
}

func (f *statsFS) Mkdir(c <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	return f.count(OpOther, t, f.RawFileSystem.Mkdir(c, in, name, out))
}

func (f *statsFS) Rmdir(c <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	t := time.Now()
	return f.count(OpOther, t, f.RawFileSystem.Rmdir(c, h, name))
}

func (f *statsFS) Link(c <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	return f.count(OpOther, t, f.RawFileSystem.Link(c, in, name, out))
}

func (f *statsFS) Symlink(c <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	return f.count(OpOther, t, f.RawFileSystem.Symlink(c, h, target, name, out))
}

func (f *statsFS) Ioctl(c <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	t := time.Now()
	return f.count(OpOther, t, f.RawFileSystem.Ioctl(c, in, inbuf, out, outbuf))
}
