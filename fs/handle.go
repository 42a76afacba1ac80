package fs

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
)

// device is an image's block device, opened twice: O_DIRECT for aligned
// requests (no second page cache) and buffered for unaligned ones. The
// kernel keeps the two coherent: a direct read writes back dirty cached
// pages of its range first, a direct write invalidates them.
type device struct {
	direct   *os.File
	buffered *os.File
	fd       int32 // direct's descriptor, for device I/O on the io_uring queues
	// syncFd is buffered's descriptor: every flush of the device goes
	// through it (handle.syncDevice, the io_uring queues), so the kernel
	// reports each write-back error to volfs exactly once (see errSeq).
	syncFd int32
	bs     int64 // logical block size: the O_DIRECT unit
	// alloc is the mapping of a sparse volume (sparse.go), nil when every
	// byte of the volume is data. Every write through volfs is recorded
	// in it.
	alloc *allocMap
	// unmapUnit is the chunk size the driver's Zeroer unmaps (writes of
	// zeros over whole chunks unmap them), 0: zeros are written.
	unmapUnit int64
	// refs is 1 for the image that holds the device plus one per
	// operation in flight on its descriptors (ring operations, and every
	// raw-fd syscall through Image.acquireDevice; os.File guards only its
	// own calls): the descriptors close when the last goes, so a number
	// still in a submitted operation or a syscall is never reused for
	// another device.
	refs atomic.Int64
	// flushNs is the moving average of the device's flushes from the
	// io_uring queues, in ns; buffered is set by the first write through
	// the page cache (flushInline).
	flushNs atomic.Int64
	dirtied atomic.Bool
}

// flushInline reports whether an io_uring queue should flush the device
// with fdatasync on its own thread rather than as a ring operation, which
// the kernel always hands to an io-wq worker (a flush cannot be issued
// without blocking): two wake-ups more, and the queue's thread sleeps
// until the worker is done. On its own thread the queue answers nothing
// else until the flush returns, so only a device whose flushes have taken
// less than inlineFlushUnder (moving average) is flushed there: one with
// no volatile write cache (queue/write_cache "write through": the block
// layer completes the flush at once, the driver never sees it), or a
// fast one (a tmpfs-backed loop device). A disk's flush takes from
// hundreds of µs to many ms: it stays on io-wq. Page cache that unaligned
// writes dirtied must be written back first, so a device written through
// it is flushed on io-wq too. Either way the call is the same (fdatasync
// of the buffered fd) and so are its durability and errors.
func (d *device) flushInline() bool {
	return d.flushNs.Load() < int64(inlineFlushUnder) && !d.dirtied.Load()
}

// inlineFlushUnder: see flushInline. A fresh device starts at 0: its
// first flush is made inline, and measured.
const inlineFlushUnder = 50 * time.Microsecond

// flush is fdatasync of the device on the calling thread, as a ring
// operation's result: the byte count or -errno.
func (d *device) flush() int32 {
	if err := unix.Fdatasync(int(d.syncFd)); err != nil {
		return -int32(err.(syscall.Errno))
	}
	return 0
}

// flushTook records how long a flush from a queue took (inline: the call;
// on the ring: from submission to the completion's handling).
func (d *device) flushTook(t time.Duration) {
	old := d.flushNs.Load()
	d.flushNs.Store(old + (int64(t)-old)/4)
}

func newDevice(direct, buffered *os.File, bs int64) *device {
	d := &device{direct: direct, buffered: buffered, fd: int32(direct.Fd()), syncFd: int32(buffered.Fd()), bs: bs}
	d.refs.Store(1)
	return d
}

// acquire takes a reference for an operation on the descriptors (a ring
// operation, or any syscall on a raw fd: see Image.acquireDevice); false
// once closed.
func (d *device) acquire() bool {
	for {
		r := d.refs.Load()
		if r <= 0 {
			return false
		}
		if d.refs.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

func (d *device) release() {
	if d.refs.Add(-1) == 0 {
		d.direct.Close()
		d.buffered.Close()
	}
}

// close drops the image's reference.
func (d *device) close() { d.release() }

// readOnly reports whether the kernel refuses writes to the device
// (losetup -r, blockdev --setro).
func (d *device) readOnly() bool {
	ro, err := unix.IoctlGetInt(int(d.direct.Fd()), unix.BLKROGET)
	return err == nil && ro != 0
}

// acquireDevice returns the open device with a reference held, or nil if
// the file has none. Every use of a device's descriptors goes through it
// (as go-fuse's withFd and gocryptfs's fdLock guard theirs): until the
// caller's release, the descriptors stay open, so a number in a syscall is
// never one the kernel has meanwhile given to another device (a zeroing
// fallocate racing with a close would otherwise zero another volume).
func (n *Image) acquireDevice() *device {
	for {
		d := n.dev.Load()
		if d == nil {
			return nil
		}
		if d.acquire() {
			return d
		}
		// Closed between the load and the acquire: a reopen may have
		// stored a new one.
		if n.dev.Load() == d {
			return nil
		}
	}
}

func (d *device) aligned(off int64, n int) bool {
	return off%d.bs == 0 && int64(n)%d.bs == 0
}

// readAt reads len(p) bytes at off.
func (d *device) readAt(p []byte, off int64) (int, error) {
	if !d.aligned(off, len(p)) {
		return fullReadAt(d.buffered, p, off)
	}
	if isAligned(p, bufAlign) {
		return fullReadAt(d.direct, p, off)
	}
	for done := 0; done < len(p); {
		chunk := min(len(p)-done, maxIO)
		b := getBuf(chunk)
		k, err := fullReadAt(d.direct, *b, off+int64(done))
		copy(p[done:], (*b)[:k])
		putBuf(b)
		done += k
		if err != nil || k < chunk {
			return done, err
		}
	}
	return len(p), nil
}

// writeAt writes p at off. Request payloads sit behind the FUSE header and
// are never aligned in memory, so aligned writes go through a pooled
// aligned buffer. The range counts as data in the mapping from now on,
// whatever the outcome.
func (d *device) writeAt(p []byte, off int64) (int, error) {
	defer d.alloc.wrote(off, int64(len(p)))
	if !d.aligned(off, len(p)) {
		d.dirtied.Store(true)
		return d.buffered.WriteAt(p, off)
	}
	if isAligned(p, bufAlign) {
		return d.direct.WriteAt(p, off)
	}
	done := 0
	for done < len(p) {
		chunk := min(len(p)-done, maxIO)
		b := getBuf(chunk)
		copy(*b, p[done:done+chunk])
		k, err := d.direct.WriteAt(*b, off+int64(done))
		putBuf(b)
		done += k
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func fullReadAt(f *os.File, p []byte, off int64) (int, error) {
	n, err := f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}

// handle is one open file.
type handle struct {
	node  *Image
	write bool // opened for writing
	// wbSince is the last write-back error this handle saw (errSeq),
	// guarded by node.syncMu.
	wbSince uint64
}

var (
	_ gofs.FileReader    = (*handle)(nil)
	_ gofs.FileWriter    = (*handle)(nil)
	_ gofs.FileFsyncer   = (*handle)(nil)
	_ gofs.FileFlusher   = (*handle)(nil)
	_ gofs.FileReleaser  = (*handle)(nil)
	_ gofs.FileAllocater = (*handle)(nil)
	_ gofs.FileLseeker   = (*handle)(nil)
)

// openFlags are the reply flags of every open: no page cache of the image
// in the kernel (the volume is the cache's backing store already), and
// parallel direct writes that do not extend the file.
const openFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES

// Open opens the image, sharing one pair of device fds between handles.
func (n *Image) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	write := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	if write && n.root.readOnly {
		return nil, 0, syscall.EROFS
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.gone && n.dev.Load() == nil {
		// Removed, and no handle keeps its volume: nothing to open. A
		// file removed while open can still be opened through
		// /proc/PID/fd, as on any file system.
		return nil, 0, syscall.ENOENT
	}
	opens := n.opens.Add(1)
	n.single.Store(opens == 1)
	if opens == 1 {
		n.root.registerOpen(n)
	}
	if !n.pending && n.dev.Load() == nil {
		if errno := n.openDeviceLocked(ctx); errno != 0 {
			n.undoOpenLocked(ctx)
			return nil, 0, errno
		}
	}
	if write {
		if d := n.acquireDevice(); d != nil {
			ro := d.readOnly()
			d.release()
			if ro {
				// A file on a read-only medium refuses to open for
				// writing; the device itself would take the open and
				// fail each write with EPERM.
				n.root.log.Warn("open for writing refused: the device is read-only",
					slog.String("volume", n.name))
				n.undoOpenLocked(ctx)
				return nil, 0, syscall.EROFS
			}
		}
	}
	if flags&syscall.O_TRUNC != 0 && write {
		// With CAP_ATOMIC_O_TRUNC the kernel passes O_TRUNC here. Only
		// now, once every refusal above (a removed file, a read-only
		// device, a device that cannot be opened) has had its say: an
		// open that fails must not have emptied the file. A block device
		// opened with O_TRUNC keeps its bytes and size, and so does a
		// file of a driver that cannot resize (cp and dd onto a device
		// file work as on the device itself).
		if _, ok := n.root.drv.(volmap.Resizer); ok {
			if errno := n.truncateLocked(ctx, 0); errno != 0 {
				n.undoOpenLocked(ctx)
				return nil, 0, errno
			}
		}
	}
	return &handle{node: n, write: write, wbSince: n.wbErr.sample()}, openFlags, 0
}

// undoOpenLocked takes back the count of an open that failed.
func (n *Image) undoOpenLocked(ctx context.Context) {
	opens := n.opens.Add(-1)
	n.single.Store(opens == 1)
	if opens > 0 {
		return
	}
	n.root.unregisterOpen(n)
	if d := n.dev.Swap(nil); d != nil {
		d.close()
	}
	n.idleLocked(ctx)
}

func (n *Image) openDeviceLocked(ctx context.Context) syscall.Errno {
	mode := os.O_RDWR
	if n.root.readOnly {
		mode = os.O_RDONLY
	}
	direct, err := n.openDeviceFile(ctx, mode|syscall.O_DIRECT|syscall.O_CLOEXEC)
	if err != nil {
		return n.root.toErrno("open", n.name, err)
	}
	buffered, err := n.openDeviceFile(ctx, mode|syscall.O_CLOEXEC)
	if err != nil {
		direct.Close()
		return n.root.toErrno("open", n.name, err)
	}
	bs, err := volmap.LogicalBlockSize(direct)
	if err != nil {
		direct.Close()
		buffered.Close()
		return n.root.toErrno("open", n.name, err)
	}
	d := newDevice(direct, buffered, int64(bs))
	n.setupSparseLocked(ctx, d)
	n.dev.Store(d)
	return 0
}

// Read reads from the device, stopping at the logical size.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n := h.node
	size := n.size.Load()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	if int64(len(dest)) > size-off {
		dest = dest[:size-off]
	}
	d := n.acquireDevice()
	if d == nil {
		return nil, n.staleErrno()
	}
	defer d.release()
	k, err := d.readAt(dest, off)
	if err != nil {
		return nil, n.root.toErrno("read", n.name, err)
	}
	if k < len(dest) {
		// Short inside the file: the device shrank under it.
		n.followDevice()
	}
	return fuse.ReadResultData(dest[:k]), 0
}

// staleErrno is what I/O on a handle without a device answers.
func (n *Image) staleErrno() syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.staleErrnoLocked()
}

func (n *Image) staleErrnoLocked() syscall.Errno {
	if n.gone {
		return syscall.ESTALE
	}
	return syscall.EIO
}

// Write writes to the device; writes past the end grow the file.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n := h.node
	end := off + int64(len(data))
	if end > n.size.Load() {
		return n.extendingWrite(ctx, data, off)
	}
	d := n.acquireDevice()
	if d == nil {
		return 0, n.staleErrno()
	}
	defer d.release()
	k, err := n.writeDevice(ctx, d, data, off)
	n.wtime.Store(time.Now().UnixNano())
	n.written.Store(true)
	if err != nil {
		return uint32(k), n.root.toErrno(opNameWrite, n.name, err)
	}
	return uint32(k), 0
}

// writeDevice writes data at off: zeros over whole chunks of a sparse
// volume are unmapped (writeZeroChunks), anything else is written.
func (n *Image) writeDevice(ctx context.Context, d *device, data []byte, off int64) (int, error) {
	if d.zeroWrite(data, off) {
		return n.writeZeroChunks(ctx, d, data, off)
	}
	return d.writeAt(data, off)
}

// extendingWrite grows the device (in geometric steps) and the logical size.
// It holds mu while writing, so the new size becomes visible only once the
// bytes behind it are written: a reader never sees what the device held
// before.
func (n *Image) extendingWrite(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.gone {
		return 0, syscall.ESTALE
	}
	end := off + int64(len(data))
	cur := n.size.Load()
	if end > n.devSize {
		if _, ok := n.root.drv.(volmap.Resizer); !ok && !n.pending {
			if off >= n.devSize {
				n.root.log.Warn("write past the end of a device that cannot grow",
					slog.String("volume", n.name), slog.Int64("size", n.devSize), slog.Int64("offset", off))
				return 0, syscall.ENOSPC
			}
			data = data[:n.devSize-off] // a short write up to the end, as on the device
		} else {
			// The lvm commands and the zeroing below take long: stat
			// and lookup answer meanwhile (busy). Writes within the
			// grown device, the most, need neither.
			n.beginBusyLocked()
			errno := n.growDeviceLocked(ctx, end, growTarget(n.devSize, end))
			n.endBusyLocked()
			if errno != 0 {
				return 0, errno
			}
		}
	}
	d := n.acquireDevice()
	if d == nil {
		return 0, n.staleErrnoLocked()
	}
	defer d.release()
	if off > cur {
		n.beginBusyLocked()
		errno := n.zeroFile(ctx, d.direct, cur, off-cur)
		n.endBusyLocked()
		if errno != 0 {
			return 0, errno
		}
	}
	k, err := n.writeDevice(ctx, d, data, off)
	if reached := off + int64(k); k > 0 && reached > cur {
		// A write that wrote nothing leaves the size (the zeroed gap
		// stays beyond it), as on a local file system.
		n.size.Store(reached)
	}
	n.wtime.Store(time.Now().UnixNano())
	n.written.Store(true)
	if err != nil {
		return uint32(k), n.root.toErrno(opNameWrite, n.name, err)
	}
	return uint32(k), 0
}

// growTarget is the device size to ask for when a write needs end bytes: a
// step as large as the device (64 MiB to 8 GiB), so a file written from
// start to end costs a few resizes, not one per write. The tail is trimmed
// on last close.
func growTarget(devSize, end int64) int64 {
	step := min(max(devSize, 64<<20), 8<<30)
	return max(end, devSize+step)
}

// Flush is close(2) (and also every close of an inherited copy of the fd
// in a forked child): FLUSH's reply is close(2)'s return value. It writes
// out the device's dirty pages so close reports their write-back errors,
// and makes the file's volume and size durable (see flushMetaOnClose);
// mtime and trimming wait for fsync or release.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	errno := h.flushPages()
	if e := h.node.flushMetaOnClose(ctx, h); errno == 0 {
		errno = e
	}
	return errno
}

// flushPages writes out the device's dirty pages (the bytes of unaligned
// writes, which take the buffered fd) and waits for them, so that close(2)
// returns their write-back errors: FLUSH's reply is close's return value.
// It does not flush the device's cache (close promises no durability), and
// handles opened read-only skip it (as NFS's close does). As NFS's flush,
// it reports without consuming: FLUSH comes at the close of every
// descriptor of the open file (a dup, a forked child's copy closed at its
// exec or exit), and the descriptors left open share the handle, whose
// next fsync must still see the error.
func (h *handle) flushPages() syscall.Errno {
	if !h.write {
		return 0
	}
	const all = unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WRITE | unix.SYNC_FILE_RANGE_WAIT_AFTER
	h.node.syncMu.Lock()
	defer h.node.syncMu.Unlock()
	h.node.writeBackLocked("flush", func(fd int) error { return unix.SyncFileRange(fd, 0, 0, all) })
	since := h.wbSince
	return h.node.wbErr.check(&since, false)
}

// syncDevice runs sync (a flush of the device) on the buffered fd, records
// the write-back error it returns, and reports to h the errors it has not
// seen yet (errSeq); seen says whether the report counts as seen for files
// opened later (fsync) or not (close). Syncs of one image are serialized,
// so an error another handle's sync took from the kernel is recorded
// before this one looks.
func (h *handle) syncDevice(op string, sync func(fd int) error, seen bool) syscall.Errno {
	n := h.node
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	n.writeBackLocked(op, sync)
	return n.wbErr.check(&h.wbSince, seen)
}

// writeBackLocked runs sync (a flush of the device, or a write-out of its
// dirty pages) on the open device's buffered fd and records the
// write-back error it returns for the open files (errSeq): the kernel
// tells it to this one call, whoever makes it. Every flush of the buffered
// fd goes through here, under syncMu.
func (n *Image) writeBackLocked(op string, sync func(fd int) error) {
	if d := n.acquireDevice(); d != nil {
		// Either fd flushes the whole block device: its dirty page cache
		// (and for fdatasync the device's write cache).
		err := sync(int(d.buffered.Fd()))
		d.release()
		if err != nil {
			n.wbErr.set(n.root.toErrno(op, n.name, err))
		}
	}
}

// Fsync flushes the device's cache, reports write-back errors, and
// persists changed attributes.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	n := h.node
	// mu first (then syncMu, as everywhere): an extending write that
	// finished after the flush must not have its size saved below.
	n.mu.Lock()
	defer n.mu.Unlock()
	n.beginBusyLocked()
	errno := h.syncDevice("fsync", unix.Fdatasync, true)
	n.endBusyLocked()
	if errno != 0 {
		// The data did not reach the device: a size recorded now would
		// cover bytes that are not there.
		return errno
	}
	if flags&fsyncDataOnly != 0 && !n.sizeChangedLocked() {
		// fdatasync (what qemu's flushes are) promises the data and what
		// is needed to read it back: the size, not the mtime. Writing
		// attributes on every flush would cost a metadata commit each.
		return errno
	}
	if e := n.persistForSyncLocked(ctx); errno == 0 {
		errno = e
	}
	return errno
}

// fsyncDataOnly is FUSE_FSYNC_FDATASYNC.
const fsyncDataOnly = 1

// Release closes a handle. The last one persists attributes, gives back
// what geometric growth took, and closes the device.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	n := h.node
	n.mu.Lock()
	defer n.mu.Unlock()
	opens := n.opens.Add(-1)
	n.single.Store(opens == 1)
	if opens > 0 {
		return 0
	}
	return n.lastCloseLocked(ctx)
}

func (n *Image) lastCloseLocked(ctx context.Context) syscall.Errno {
	n.root.unregisterOpen(n)
	n.single.Store(false)
	var errno syscall.Errno
	if d := n.dev.Swap(nil); d != nil {
		n.beginBusyLocked()
		n.syncMu.Lock()
		err := unix.Fdatasync(int(d.buffered.Fd()))
		n.endBusyLocked()
		if err != nil {
			// Kept for the next open's fsync, which sees an error no
			// fsync has reported (errSeq), as with the raw device.
			errno = n.root.toErrno("flush on close", n.name, err)
			n.wbErr.set(errno)
		}
		n.syncMu.Unlock()
		d.close()
	}
	n.wbErr.forgetSeen()
	if n.gone {
		n.purgeLocked(ctx)
		return errno
	}
	if n.pending {
		// `touch` makes a file that outlives the mount.
		sz := max(n.size.Load(), 1)
		if e := n.createLocked(ctx, sz, sz); e != 0 {
			return e
		}
	}
	// The size first, then the trim (see truncateLocked); a size that
	// could not be saved keeps the LV's extra space until a later close.
	if e := n.persistLocked(ctx); e != 0 {
		if errno == 0 {
			errno = e
		}
	} else {
		n.trimLocked(ctx)
	}
	n.idleLocked(ctx)
	return errno
}

// idleLocked tells the driver that volfs no longer has the file open (on
// a shared VG, its LV is deactivated and other hosts may use it). Nothing
// happens while a handle is open.
func (n *Image) idleLocked(ctx context.Context) {
	if n.opens.Load() > 0 || n.gone || n.pending {
		return
	}
	if id, ok := n.root.drv.(volmap.Idler); ok {
		id.Idle(ctx, n.name)
	}
}

// Allocate implements fallocate: punching holes and zeroing ranges go to
// the device; mode 0 inside the file is a no-op and past it grows the file.
func (h *handle) Allocate(ctx context.Context, off, length uint64, mode uint32) syscall.Errno {
	n := h.node
	if n.root.readOnly {
		return syscall.EROFS
	}
	start, end := int64(off), int64(off+length)
	keep := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case 0:
		if !keep && end > n.size.Load() {
			return n.truncate(ctx, end)
		}
		return 0
	case unix.FALLOC_FL_PUNCH_HOLE:
		if !keep {
			return syscall.EINVAL
		}
		return n.zeroInside(ctx, start, end, true)
	case unix.FALLOC_FL_ZERO_RANGE:
		// Grow first, then zero what was inside: a grow that is refused
		// (a device file) or fails (no space) leaves every byte as it was.
		size := n.size.Load()
		if !keep && end > size {
			if errno := n.truncate(ctx, end); errno != 0 { // zeroes what it adds
				return errno
			}
		}
		return n.zeroInside(ctx, start, min(end, size), false)
	default:
		return syscall.EOPNOTSUPP
	}
}

// zeroInside zeroes the part of [start, end) inside the file.
func (n *Image) zeroInside(ctx context.Context, start, end int64, punch bool) syscall.Errno {
	end = min(end, n.size.Load())
	if start >= end {
		return 0
	}
	d := n.acquireDevice()
	if d == nil {
		return n.staleErrno()
	}
	defer d.release()
	if _, ok := n.root.drv.(volmap.Zeroer); ok || !punch {
		return n.zeroFile(ctx, d.direct, start, end-start)
	}
	// The device punches whole blocks; the partial blocks at either end
	// are zeroed.
	head := min((start+d.bs-1)/d.bs*d.bs, end)
	tail := max(end/d.bs*d.bs, head)
	if errno := n.zeroFile(ctx, d.direct, start, head-start); errno != 0 {
		return errno
	}
	if errno := n.zeroFile(ctx, d.direct, tail, end-tail); errno != 0 {
		return errno
	}
	if tail <= head {
		return 0
	}
	start, end = head, tail
	err := unix.Fallocate(int(d.direct.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, end-start)
	if errors.Is(err, unix.EOPNOTSUPP) {
		// The device cannot unmap with a zeroing guarantee; zeroing still
		// gives what a hole promises: zeros.
		return n.zeroFile(ctx, d.direct, start, end-start)
	}
	return n.root.toErrno(opNamePunchHole, n.name, err)
}
