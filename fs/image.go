package fs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// Image is the node of one image file.
type Image struct {
	gofs.Inode
	root *Root
	ino  uint64

	// mu guards the fields below it and serializes every change of the
	// logical or device size. Reads and writes inside the size take no lock.
	mu      sync.Mutex
	name    string
	vol     volmap.Volume // as the driver last described it
	pending bool          // created, no volume yet
	// layout is the layout a pending file's volume is to be created with
	// (trusted.volfs.layout); zero: the driver's default.
	layout volmap.Layout
	gone   bool // unlinked
	// detached is the driver's token for the volume of a file removed
	// while open; the volume is purged on last close.
	detached string
	attrs    meta.Attrs // in memory; attrs.Size is unused (see size)
	saved    meta.Attrs // what the driver has persisted
	devSize  int64      // the device's size in bytes
	// recorded is the size the listing last showed recorded for the
	// volume (-1: none), as the listing had it: it tells a size another
	// volfs recorded from one left as it was (refresh).
	recorded int64
	// lvSized: another tool resized the volume, and the file takes the
	// LV's size whatever size is recorded (refresh).
	lvSized bool
	// opens counts the open handles: changed under mu, read without it
	// by volfs status and the metrics, which must not wait behind an
	// lvm command or a device flush that holds mu (forever on a hung disk).
	opens atomic.Int32
	// changed is the root's epoch after this node last changed its volume
	// through the driver (create, resize, attributes, rename). A driver
	// description read before that is older than the node's own state.
	changed uint64

	// size is the logical size: reads stop there. Written under mu, read
	// without it on the data path.
	size atomic.Int64
	// written is set by every write and cleared when mtime is persisted:
	// mtime from writes is kept in memory and flushed on fsync, last close
	// and unmount, never per write (a tag change rewrites VG metadata).
	written atomic.Bool
	wtime   atomic.Int64 // time of the last write, Unix nanoseconds
	// dev holds the device fds while the file is open (set under mu, read
	// without it on the data path, always through acquireDevice).
	dev atomic.Pointer[device]
	// single is opens == 1: the io_uring queues may then answer an
	// fdatasync from their own flush of the device (ringMaySync).
	single atomic.Bool

	// syncMu serializes the flushes of the device (handle.syncDevice,
	// the last close): an error one of them takes from the kernel is in
	// wbErr before the next looks. Taken after mu, never before it.
	syncMu sync.Mutex
	// wbErr are the device's write-back errors, reported to each handle
	// once (errSeq).
	wbErr errSeq
	// sizeChecked is when the open device's size was last compared with
	// the file's (Unix nanoseconds; see followDevice).
	sizeChecked atomic.Int64

	// busy is set, under mu, while mu is held for something long: a
	// flush of the device (fsync, last close: seconds on a slow disk,
	// forever on a hung one), a growth (an lvm command) or a zeroing
	// (minutes for a large range on a device that writes the zeros).
	// busyAttr is the attributes taken when it began; stat and lookup (a
	// listing's READDIRPLUS) answer from it, with the live size and write
	// time, instead of queueing behind mu: one file's writer cannot stall
	// `ls -l` of the mount.
	busy     atomic.Bool
	busyAttr atomic.Pointer[fuse.Attr]
}

// beginBusyLocked records the attributes and marks mu busy (see busy);
// endBusyLocked ends it, still under mu. They do not nest.
func (n *Image) beginBusyLocked() {
	var a fuse.Attr
	n.fillAttrLocked(&a)
	n.busyAttr.Store(&a)
	n.busy.Store(true)
}

func (n *Image) endBusyLocked() { n.busy.Store(false) }

// busyLong reports whether mu is held for something long (see busy): then
// the attributes are those of busyAttr, with the live size and times.
func (n *Image) busyLong() bool { return n.busy.Load() && n.busyAttr.Load() != nil }

var (
	_ gofs.NodeGetattrer     = (*Image)(nil)
	_ gofs.NodeSetattrer     = (*Image)(nil)
	_ gofs.NodeOpener        = (*Image)(nil)
	_ gofs.NodeGetxattrer    = (*Image)(nil)
	_ gofs.NodeSetxattrer    = (*Image)(nil)
	_ gofs.NodeListxattrer   = (*Image)(nil)
	_ gofs.NodeRemovexattrer = (*Image)(nil)
	_ gofs.NodeOnForgetter   = (*Image)(nil)
	_ gofs.NodeStatfser      = (*Image)(nil)
)

// Statfs of a file is its file system's. Without it go-fuse answers zeros:
// `df FILE` shows nothing, and a loop device over the file gets a discard
// granularity of 0, which makes the kernel refuse every discard on it
// (fstrim in a file system on the image would give nothing back).
func (n *Image) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return n.root.Statfs(ctx, out)
}

func newImage(r *Root, v volmap.Volume) *Image {
	n := &Image{root: r, ino: inoOf(v.Identity()), name: v.Name}
	n.load(v)
	return n
}

func newPending(r *Root, name string, a meta.Attrs) *Image {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	a.ID = hex.EncodeToString(id)
	n := &Image{root: r, ino: inoOf(a.ID), name: name, pending: true, attrs: a, saved: a}
	return n
}

// load takes the driver's description as the truth.
func (n *Image) load(v volmap.Volume) {
	n.vol = v
	n.name = v.Name
	n.attrs = v.Attrs.Clone()
	if v.Defaulted {
		n.root.defaults.apply(&n.attrs)
	}
	// Defaults count as saved: nothing is written until the file changes.
	n.saved = n.attrs.Clone()
	n.devSize = v.Size
	n.recorded, n.lvSized = v.Attrs.Size, false
	if v.Attrs.Size >= 0 && v.Attrs.Size <= v.Size {
		n.size.Store(v.Attrs.Size)
	} else {
		// Nothing recorded, or a recorded size the device cannot hold
		// (reduced by another tool): the device's size.
		n.size.Store(v.Size)
	}
}

// refresh updates an idle node from the driver, so changes made by other
// tools (lvextend, lvchange --addtag) show; an open node keeps its own state.
// since is the root's epoch before v was read: a description read before
// the node's own last change is stale (a lookup racing with the release
// that trims the volume and records the size) and is ignored, else it
// would undo that change in memory and a later close would act on it.
func (n *Image) refresh(v volmap.Volume, since uint64) {
	if !n.mu.TryLock() {
		if n.busyLong() {
			// The node is busy (flushing, growing, zeroing); the next
			// lookup brings what the listing says.
			return
		}
		n.mu.Lock()
	}
	defer n.mu.Unlock()
	if n.changed > since {
		return
	}
	n.name = v.Name
	if n.opens.Load() > 0 || n.pending || n.written.Load() {
		n.vol.Used = v.Used
		return
	}
	recorded := v.Attrs.Size
	// Resized by another tool (lvextend, lvreduce) that left the recorded
	// size as it was: the file is as large as the volume now, until a
	// size is recorded again. A size recorded anew with the resize is
	// another volfs's (another host of a shared VG): it stands, as the
	// LV's size would show what lies past the file's end in its last
	// extents (on a linear LV, an old volume's bytes).
	lvSized := (v.Size != n.devSize || n.lvSized) && recorded == n.recorded
	if lvSized && v.Size != n.devSize {
		n.root.log.Info("volume resized outside volfs; the file takes its size",
			slog.String("volume", v.Name), slog.Int64("was", n.devSize), slog.Int64("size", v.Size))
	}
	if lvSized {
		v.Attrs.Size = -1
	}
	n.load(v)
	n.recorded, n.lvSized = recorded, lvSized
}

// changedLocked records that the node changed its volume through the
// driver (see changed).
func (n *Image) changedLocked() { n.changed = n.root.epoch.Add(1) }

func (n *Image) setName(name string) {
	n.mu.Lock()
	n.name = name
	n.changedLocked()
	n.mu.Unlock()
}

func (n *Image) unlinked() {
	n.mu.Lock()
	n.gone = true
	n.pending = false
	n.mu.Unlock()
}

// detach removes the name of a file that is still open, keeping its volume
// until the last handle closes (as a file system keeps an unlinked inode).
// It reports whether it did; a non-zero errno means the name must stay (the
// volume is in use outside volfs).
func (n *Image) detach(ctx context.Context) (bool, syscall.Errno) {
	dt, ok := n.root.drv.(volmap.Detacher)
	if !ok {
		return false, 0
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.opens.Load() == 0 || n.gone {
		return false, 0
	}
	token, err := dt.Detach(ctx, n.name)
	n.changedLocked()
	if errors.Is(err, volmap.ErrInUse) {
		return false, n.root.toErrno("remove", n.name, err)
	}
	if err != nil {
		n.root.log.Warn("could not keep a removed file open until its last close; removing it now",
			slog.String("volume", n.name), slog.Any("err", err))
		return false, 0
	}
	n.detached = token
	n.gone = true
	return true, 0
}

// reattach undoes detach under name (a rename over the open file failed
// after its volume was detached).
func (n *Image) reattach(ctx context.Context, name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.detached == "" {
		return nil
	}
	dt, ok := n.root.drv.(volmap.Detacher)
	if !ok {
		return fmt.Errorf("reattach %s: the driver cannot", name)
	}
	err := dt.Reattach(ctx, n.detached, name)
	n.changedLocked()
	if err != nil {
		return err
	}
	n.detached = ""
	n.gone = false
	n.name = name
	return nil
}

// purgeLocked destroys the volume of a file removed while open.
func (n *Image) purgeLocked(ctx context.Context) {
	if n.detached == "" {
		return
	}
	dt, ok := n.root.drv.(volmap.Detacher)
	if !ok {
		n.root.log.Error("a removed file's volume cannot be purged: the driver has no Detacher",
			slog.String("volume", n.name), slog.String("token", n.detached))
		n.detached = ""
		return
	}
	if err := dt.Purge(ctx, n.detached); err != nil {
		n.root.log.Warn("removing the volume of a deleted file failed; volfs retries at its next start",
			slog.String("volume", n.name), slog.String("token", n.detached), slog.Any("err", err))
	}
	n.detached = ""
}

// OnForget drops the node from the root's table when the kernel forgets it.
// A write-back error no fsync has reported yet stays with the root, for the
// node the next lookup makes.
func (n *Image) OnForget() {
	n.root.forget(n)
	if v := n.wbErr.v.Load(); v != 0 && v&seenBit == 0 {
		n.root.keepWritebackErr(n.ino, v)
	}
}

// ringMaySync reports whether an io_uring queue may answer an fdatasync of
// the image from its own flush of the device: only while one handle is
// open and no write-back error is on record, so the flush's answer cannot
// be an error another handle still has to see. (A second handle opened
// while that flush runs can miss an error the flush took from the kernel,
// if it also fsyncs before the flush's completion records it.)
func (n *Image) ringMaySync() bool { return n.single.Load() && !n.wbErr.any() }

// shortRead makes the next Getattr compare the device's size at once: an
// io_uring queue read less than the file holds.
func (n *Image) shortRead() { n.sizeChecked.Store(0) }

// followDevice takes the size of the open device when another tool changed
// it (lvreduce, or losetup -c after the backing file was truncated), so that
// st_size of an open file follows the device instead of promising bytes it
// no longer has. A device file takes any new size; a file of a driver that
// resizes keeps a logical size below the device's.
func (n *Image) followDevice() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sizeChecked.Store(time.Now().UnixNano())
	d := n.acquireDevice()
	if d == nil {
		return
	}
	defer d.release()
	// Under mu: volfs's own resizes hold it, so a size read here is never
	// one from before a resize of our own.
	size, err := volmap.DeviceSize(d.direct)
	if err != nil || size == n.devSize {
		return
	}
	cur := n.size.Load()
	n.root.log.Warn("device resized by another tool while the file is open; the file follows it",
		slog.String("volume", n.name), slog.Int64("was", n.devSize), slog.Int64("size", size))
	n.devSize, n.vol.Size = size, size
	_, resizer := n.root.drv.(volmap.Resizer)
	if size < cur || !resizer {
		n.size.Store(size)
	}
}

func (n *Image) fillAttr(out *fuse.Attr) {
	if !n.mu.TryLock() {
		if a := n.busyAttr.Load(); a != nil && n.busy.Load() {
			*out = *a
			// The data path changes these without mu.
			if size := n.size.Load(); size != int64(out.Size) {
				if out.Blocks == uint64(out.Size+511)/512 {
					out.Blocks = uint64(size+511) / 512
				}
				out.Size = uint64(size)
			}
			if n.written.Load() {
				mtime := time.Unix(0, n.wtime.Load())
				out.SetTimes(nil, &mtime, &mtime)
			}
			return
		}
		n.mu.Lock()
	}
	defer n.mu.Unlock()
	n.fillAttrLocked(out)
}

func (n *Image) fillAttrLocked(out *fuse.Attr) {
	size := n.size.Load()
	out.Ino = n.ino
	out.Size = uint64(size)
	switch {
	case n.pending:
		out.Blocks = 0
	case n.vol.Used >= 0:
		out.Blocks = uint64(n.vol.Used+511) / 512
	default:
		out.Blocks = uint64(size+511) / 512
	}
	out.Mode = syscall.S_IFREG | n.attrs.Mode
	out.Nlink = 1
	if n.gone {
		out.Nlink = 0
	}
	out.Uid, out.Gid = n.attrs.UID, n.attrs.GID
	mtime, ctime := n.attrs.Mtime, n.attrs.Ctime
	if n.written.Load() {
		mtime = time.Unix(0, n.wtime.Load())
		ctime = mtime
	}
	out.SetTimes(&n.attrs.Atime, &mtime, &ctime)
	// cp and friends size their buffers by st_blksize: large requests are
	// what FUSE serves best.
	out.Blksize = maxIO
}

// Getattr reports the file's attributes. An open file's size is checked
// against its device at most once a second (followDevice).
func (n *Image) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if n.dev.Load() != nil && !n.busyLong() && time.Now().UnixNano()-n.sizeChecked.Load() >= int64(time.Second) {
		n.followDevice()
	}
	n.fillAttr(&out.Attr)
	return 0
}

// Setattr changes mode, owner, times or size, and persists the change.
func (n *Image) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if n.root.readOnly {
		return syscall.EROFS
	}
	now := time.Now()
	for _, get := range []func() (time.Time, bool){in.GetATime, in.GetMTime} {
		if t, ok := get(); ok {
			if err := meta.CheckTime(t); err != nil {
				// Kept, it would fail every later save of the file's
				// attributes (touch -d 10000-01-02).
				n.root.log.Warn("setattr refused", slog.String("volume", n.name), slog.Any("err", err))
				return syscall.EINVAL
			}
		}
	}
	if sz, ok := in.GetSize(); ok {
		if errno := n.truncate(ctx, int64(sz)); errno != 0 {
			return errno
		}
	}
	n.mu.Lock()
	was, wasWritten := n.attrs.Clone(), n.written.Load()
	if m, ok := in.GetMode(); ok {
		n.attrs.Mode = m & 07777
	}
	if uid, ok := in.GetUID(); ok {
		n.attrs.UID = uid
	}
	if gid, ok := in.GetGID(); ok {
		n.attrs.GID = gid
	}
	if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
		n.attrs.Atime = now
	} else if t, ok := in.GetATime(); ok {
		n.attrs.Atime = t
	}
	if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
		n.attrs.Mtime = now
		n.written.Store(false)
	} else if t, ok := in.GetMTime(); ok {
		n.attrs.Mtime = t
		n.written.Store(false) // an explicit mtime wins over earlier writes
	}
	n.attrs.Ctime = now
	errno := n.persistFlushedLocked(ctx, "flush before setattr")
	if errno != 0 {
		// Not saved: the change did not happen, and a later save does
		// not trip over it.
		n.attrs = was
		if wasWritten {
			n.written.Store(true)
		}
	}
	n.mu.Unlock()
	n.fillAttr(&out.Attr)
	return errno
}

// truncate sets the logical size, growing or shrinking the volume.
func (n *Image) truncate(ctx context.Context, size int64) syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.beginBusyLocked()
	defer n.endBusyLocked()
	return n.truncateLocked(ctx, size)
}

func (n *Image) truncateLocked(ctx context.Context, size int64) syscall.Errno {
	cur := n.size.Load()
	if size == cur {
		return 0
	}
	if size < 0 {
		return syscall.EINVAL
	}
	if _, ok := n.root.drv.(volmap.Resizer); !ok {
		n.root.log.Warn("truncate refused: this driver cannot resize volumes",
			slog.String("volume", n.name), slog.Int64("size", cur), slog.Int64("requested", size))
		return syscall.EPERM
	}
	if g, ok := n.root.drv.(volmap.SizeGuard); ok && !n.pending {
		if err := g.CheckResize(ctx, n.name); err != nil {
			return n.root.toErrno("truncate", n.name, err)
		}
	}
	if errno := n.growDeviceLocked(ctx, size, size); errno != 0 {
		return errno
	}
	if size > cur {
		if errno := n.zeroLocked(ctx, cur, size-cur); errno != 0 {
			return errno
		}
	}
	if size < cur && n.vol.Thin && !n.pending {
		// What is cut off a thin file goes back to the pool (the zeroing
		// of a thin volume unmaps whole chunks), so st_blocks and the
		// pool's usage shrink with the file.
		if errno := n.zeroLocked(ctx, size, cur-size); errno != 0 {
			return errno
		}
	}
	n.size.Store(size)
	now := time.Now()
	n.attrs.Mtime, n.attrs.Ctime = now, now
	// The new size is recorded before the LV shrinks to it: with the
	// old size (or none) recorded, a crash between them would give the
	// file the trimmed LV's size, neither the old size nor the new.
	if errno := n.persistFlushedLocked(ctx, "flush before truncate"); errno != 0 {
		return errno
	}
	if n.opens.Load() == 0 {
		n.trimLocked(ctx)
	}
	return 0
}

// growDeviceLocked makes the device hold at least need bytes, asking for
// want (a larger, geometric step) first. A pending file gets its volume.
func (n *Image) growDeviceLocked(ctx context.Context, need, want int64) syscall.Errno {
	if n.gone {
		return syscall.ESTALE
	}
	if n.pending {
		return n.createLocked(ctx, want, need)
	}
	if need <= n.devSize {
		return 0
	}
	rs, ok := n.root.drv.(volmap.Resizer)
	if !ok {
		n.root.log.Warn("write past the end of a device that cannot grow",
			slog.String("volume", n.name), slog.Int64("size", n.devSize), slog.Int64("needed", need))
		return syscall.ENOSPC
	}
	if errno := n.pinSizeLocked(ctx); errno != 0 {
		return errno
	}
	got, err := n.resize(ctx, rs, want)
	if err != nil && want > need {
		n.root.log.Info("geometric grow failed, growing to what is needed",
			slog.String("volume", n.name), slog.Int64("wanted", want), slog.Int64("needed", need), slog.Any("err", err))
		got, err = n.resize(ctx, rs, need)
	}
	n.changedLocked()
	if err != nil {
		return n.root.toErrno("resize", n.name, err)
	}
	n.devSize = got
	n.vol.Size = got
	return 0
}

// pinSizeLocked records the file's size before its LV grows, when none is
// recorded (a file is then its LV's size, as after a trim to whole
// extents or for an LV made by another tool). Otherwise a crash before the
// next save would make the file the whole grown LV, whose new space holds
// whatever it held before: on a linear LV, another volume's old data.
func (n *Image) pinSizeLocked(ctx context.Context) syscall.Errno {
	if n.saved.Size >= 0 || n.pending || n.gone {
		return 0
	}
	a := n.saved.Clone()
	a.Size = n.devSize // what "no size recorded" means now
	err := n.setAttrs(ctx, a)
	n.changedLocked()
	if err != nil {
		return n.root.toErrno("record the size before growing", n.name, err)
	}
	n.saved = a
	return 0
}

// createLocked gives a pending file its volume.
func (n *Image) createLocked(ctx context.Context, want, need int64) syscall.Errno {
	cr := n.root.drv.(volmap.Creator) // pending files exist only for Creators
	// Unlink and rename change a pending file's name only under mu
	// (Root.unlinkPending, Root.renamePending), so the name cannot change
	// while the volume is made; a file that is no longer listed under its
	// name (removed, renamed) must not get a volume under that name.
	if !n.listedPendingLocked() {
		n.root.log.Warn("a file without a volume is no longer listed under its name; no volume made",
			slog.String("volume", n.name))
		return syscall.ESTALE
	}
	a := n.attrs.Clone()
	a.Size = n.size.Load()
	create := cr.Create
	if n.layout.Type != "" && n.root.layouter != nil {
		l := n.layout
		create = func(ctx context.Context, name string, size int64, a meta.Attrs) (volmap.Volume, error) {
			return n.root.layouter.CreateLayout(ctx, name, size, a, l)
		}
	}
	v, err := create(ctx, n.name, want, a)
	if errors.Is(err, volmap.ErrNoSpace) && want > need {
		// No room for the growth step: the size asked for may fit. Only
		// then: after any other failure the first volume may exist.
		v, err = create(ctx, n.name, need, a)
	}
	n.changedLocked()
	if err != nil {
		errno := n.root.toErrno("create", n.name, err)
		if n.opens.Load() == 0 {
			// The last close of a file that never got a volume (a full
			// VG): nothing holds it any more and it cannot be created,
			// so it leaves the directory instead of being listed, empty
			// and unwritable, until unmount.
			n.root.log.Warn("file closed without a volume, dropped",
				slog.String("volume", n.name), slog.String("errno", errno.Error()))
			n.root.mu.Lock()
			if n.root.pending[n.name] == n {
				delete(n.root.pending, n.name)
			}
			n.root.mu.Unlock()
			n.pending = false
			n.gone = true
		}
		return errno
	}
	if !n.listedPendingLocked() {
		// Cannot happen while unlink and rename take mu; should it, the
		// volume just made is for a name that is no longer this file's.
		n.root.log.Error("a file was removed or renamed while its volume was made; removing that volume",
			slog.String("volume", n.name))
		if rm, ok := n.root.drv.(volmap.Remover); ok {
			if err := rm.Remove(context.WithoutCancel(ctx), n.name); err != nil {
				n.root.log.Error("removing the volume of a removed file failed",
					slog.String("volume", n.name), slog.Any("err", err))
			}
		}
		return syscall.ESTALE
	}
	n.vol = v
	n.devSize = v.Size
	n.saved = v.Attrs.Clone()
	n.pending = false
	n.root.mu.Lock()
	if n.root.pending[n.name] == n {
		delete(n.root.pending, n.name)
	}
	n.root.nodes[n.ino] = n
	n.root.mu.Unlock()
	if n.opens.Load() > 0 {
		return n.openDeviceLocked(ctx)
	}
	return 0
}

// listedPendingLocked reports whether the file is still pending and listed
// as pending under its name.
func (n *Image) listedPendingLocked() bool {
	n.root.mu.Lock()
	defer n.root.mu.Unlock()
	return n.root.pendingAsLocked(n, n.name)
}

// materialize creates the volume of a pending file now (rename over an
// existing file, last close).
func (n *Image) materialize(ctx context.Context) syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.pending {
		return 0
	}
	sz := max(n.size.Load(), 1)
	return n.createLocked(ctx, sz, sz)
}

// trimLocked gives back what geometric growth took beyond the logical size.
func (n *Image) trimLocked(ctx context.Context) {
	rs, ok := n.root.drv.(volmap.Resizer)
	size := n.size.Load()
	if !ok || n.pending || n.gone || n.devSize <= size {
		return
	}
	got, err := n.resize(ctx, rs, max(size, 1))
	n.changedLocked()
	if err != nil {
		n.root.log.Warn("trimming the volume to the file size failed; it keeps its extra space",
			slog.String("volume", n.name), slog.Int64("size", size), slog.Any("err", err))
		return
	}
	n.devSize = got
	n.vol.Size = got
}

// zeroLocked makes [off, off+length) read as zeros: bytes a file exposes by
// growing must never be a previous volume's data.
func (n *Image) zeroLocked(ctx context.Context, off, length int64) syscall.Errno {
	if length <= 0 {
		return 0
	}
	f, closeF, errno := n.deviceFileLocked(ctx)
	if errno != 0 {
		return errno
	}
	defer closeF()
	return n.zeroFile(ctx, f, off, length)
}

// zeroFile zeroes [off, off+length) of the device open as f. A block
// device zeroes (or unmaps) only whole logical blocks (fallocate answers
// EINVAL otherwise), and a file's size is any byte count: a partial block
// at either end is read, cleared and written back.
func (n *Image) zeroFile(ctx context.Context, f *os.File, off, length int64) syscall.Errno {
	if length <= 0 {
		return 0
	}
	// Zeroed or unmapped: the mapping of a sparse volume is read again.
	defer func() {
		if d := n.dev.Load(); d != nil {
			d.alloc.drop()
		}
	}()
	end := off + length
	bs := int64(512)
	if b, err := volmap.LogicalBlockSize(f); err == nil && b > 0 && b <= bufAlign {
		bs = int64(b)
	}
	head := min((off+bs-1)/bs*bs, end)
	tail := max(end/bs*bs, head)
	if head > off {
		if err := zeroPartial(f, off, head-off, bs); err != nil {
			return n.root.toErrno(opNameZeroRange, n.name, err)
		}
	}
	if tail < end {
		if err := zeroPartial(f, tail, end-tail, bs); err != nil {
			return n.root.toErrno(opNameZeroRange, n.name, err)
		}
	}
	if tail <= head {
		return 0
	}
	var err error
	if z, ok := n.root.drv.(volmap.Zeroer); ok {
		err = z.Zero(ctx, n.name, f, head, tail-head)
	} else {
		err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, head, tail-head)
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		// Growth and truncate need the zeros whatever the device can
		// do, and so does a zero-range: write them.
		err = writeZeros(f, head, tail-head)
	}
	return n.root.toErrno(opNameZeroRange, n.name, err)
}

// writeZeros writes zeros over [off, off+length), whole logical blocks of
// the device open as f.
func writeZeros(f *os.File, off, length int64) error {
	b := getBuf(int(min(length, maxIO)))
	defer putBuf(b)
	clear(*b)
	for done := int64(0); done < length; {
		k, err := f.WriteAt((*b)[:min(int64(len(*b)), length-done)], off+done)
		done += int64(k)
		if err != nil {
			return fmt.Errorf("write zeros at %d of %s: %w", off+done, f.Name(), err)
		}
	}
	return nil
}

// zeroPartial zeroes [off, off+length), which lies inside one logical
// block of bs bytes, by rewriting that block (f may be opened O_DIRECT:
// the buffer is aligned and the I/O is one whole block).
func zeroPartial(f *os.File, off, length, bs int64) error {
	blk := off / bs * bs
	b := getBuf(int(bs))
	defer putBuf(b)
	if _, err := f.ReadAt(*b, blk); err != nil {
		return fmt.Errorf("read block at %d of %s: %w", blk, f.Name(), err)
	}
	clear((*b)[off-blk : off-blk+length])
	if _, err := f.WriteAt(*b, blk); err != nil {
		return fmt.Errorf("write block at %d of %s: %w", blk, f.Name(), err)
	}
	return nil
}

// deviceFileLocked returns an fd of the device: the open one, or a
// temporary one (setattr on a path nobody has open).
func (n *Image) deviceFileLocked(ctx context.Context) (*os.File, func(), syscall.Errno) {
	if d := n.acquireDevice(); d != nil {
		return d.direct, d.release, 0
	}
	f, err := n.openDeviceFile(ctx, os.O_RDWR|syscall.O_DIRECT|syscall.O_CLOEXEC)
	if err != nil {
		n.idleLocked(ctx) // an activation that came before the failure
		return nil, nil, n.root.toErrno("open", n.name, err)
	}
	return f, func() { f.Close(); n.idleLocked(ctx) }, 0
}

// persistLocked writes attributes the driver does not have yet.
func (n *Image) persistLocked(ctx context.Context) syscall.Errno {
	if n.pending || n.gone {
		return 0
	}
	a := n.attrs.Clone()
	wrote := n.written.Swap(false)
	if wrote {
		// mtime from writes, recorded in memory by the data path
		t := time.Unix(0, n.wtime.Load())
		n.attrs.Mtime, n.attrs.Ctime = t, t
		a.Mtime, a.Ctime = t, t
	}
	a.Size = n.size.Load()
	if a.Size == n.devSize && n.saved.Size != a.Size {
		// The LV's size: no tag needed. A tag that already says it
		// stays (a trim after the save made the LV that size).
		a.Size = -1
	}
	if a.Equal(n.saved) {
		return 0
	}
	err := n.setAttrs(ctx, a)
	n.changedLocked()
	if err != nil {
		if wrote {
			// Still unsaved: the node must not look idle to refresh,
			// which would take the driver's older size for the truth.
			n.written.Store(true)
		}
		return n.root.toErrno("save attributes", n.name, err)
	}
	n.saved = a
	return 0
}

// persistFlushedLocked persists attributes from a path that has not
// flushed the device (chmod, utimes, truncate, xattrs): every save writes
// the logical size too, and a size that changed since the last save may
// cover bytes of writes still in the page cache or the device's write
// cache. They are flushed first, under mu as fsync does (fc884b0), so no
// extending write can slip in between: a crash must never show a size
// over data that never reached the device. A failed flush saves nothing.
func (n *Image) persistFlushedLocked(ctx context.Context, op string) syscall.Errno {
	if !n.pending && !n.gone && n.sizeChangedLocked() {
		if errno := n.flushDeviceLocked(ctx, op); errno != 0 {
			return errno
		}
	}
	return n.persistLocked(ctx)
}

// flushDeviceLocked fdatasyncs the device: the open one (its write-back
// error recorded for the open files, errSeq), or, for a file nobody has
// open (truncate of a closed file zeroes through a temporary O_DIRECT
// fd, whose bytes may still be in the device's write cache), a temporary
// fd. Lock order: mu before syncMu.
func (n *Image) flushDeviceLocked(ctx context.Context, op string) syscall.Errno {
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	if d := n.acquireDevice(); d != nil {
		err := unix.Fdatasync(int(d.buffered.Fd()))
		d.release()
		if err != nil {
			errno := n.root.toErrno(op, n.name, err)
			n.wbErr.set(errno)
			return errno
		}
		return 0
	}
	f, err := n.openDeviceFile(ctx, os.O_RDONLY|syscall.O_CLOEXEC)
	if err != nil {
		return n.root.toErrno(op, n.name, err)
	}
	defer f.Close()
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return n.root.toErrno(op, n.name, err)
	}
	return 0
}

// persistForSyncLocked persists attributes for fsync. Their failure never
// fails the fsync of the data (it is logged), with one exception: a changed
// size that cannot be recorded, since fsync promises what is needed to read
// the data back. The size is then tried alone, over the attributes last
// saved, so that another attribute cannot hold it back.
func (n *Image) persistForSyncLocked(ctx context.Context) syscall.Errno {
	if n.persistLocked(ctx) == 0 || !n.sizeChangedLocked() {
		return 0
	}
	a := n.saved.Clone()
	a.Size = n.size.Load()
	if a.Size == n.devSize {
		a.Size = -1
	}
	err := n.root.drv.SetAttrs(ctx, n.name, a)
	n.changedLocked()
	if err != nil {
		return n.root.toErrno("save the size", n.name, err)
	}
	n.saved = a
	return 0
}

// sizeChangedLocked reports whether the logical size differs from the one
// persisted.
func (n *Image) sizeChangedLocked() bool {
	size := n.size.Load()
	if n.saved.Size >= 0 {
		return size != n.saved.Size
	}
	return size != n.devSize
}

// closeDevices closes the fds of an image about to be removed.
func (n *Image) closeDevices() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if d := n.dev.Swap(nil); d != nil {
		d.close()
	}
}

// Getxattr returns a stored (user.* or trusted.*) attribute; a missing one
// is ENODATA. Other namespaces are ENOTSUP, as their set is, so a program
// that asks before it sets learns they are unsupported (libvirt asks for
// trusted.libvirt.security.ref_dac and sets it when told ENODATA). Never
// ENOSYS: that would make the kernel stop sending getxattr for the mount.
func (n *Image) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if attr == meta.LayoutXattr {
		return n.getLayout(dest)
	}
	if !meta.XattrStored(attr) {
		return 0, unstoredXattr(attr)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.attrs.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// unstoredXattr answers a get or remove of an attribute in a namespace
// volfs does not store: ENOTSUP, as a local file system without a handler
// for the namespace answers, and as the set answers. Only
// security.capability finds nothing (ENODATA): the kernel asks for it on
// exec and writes. The POSIX ACLs are unsupported too (the mount does not
// negotiate FUSE_POSIX_ACL, so the kernel checks mode and owner alone and
// never asks for them): ENOTSUP tells `ls -l`, which asks every file for
// its ACL and SELinux label, that the file system has neither, and it
// stops asking after the first file; ENODATA cost a round trip per file.
func unstoredXattr(attr string) syscall.Errno {
	if attr == "security.capability" {
		return syscall.ENODATA
	}
	return syscall.ENOTSUP
}

// Listxattr lists the stored attributes. trusted.* names are listed only
// to callers with CAP_SYS_ADMIN, as local file systems do: the kernel
// hides their values from others but passes a FUSE server's list through.
func (n *Image) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	n.mu.Lock()
	names := make([]string, 0, len(n.attrs.Xattrs))
	for k := range n.attrs.Xattrs {
		names = append(names, k)
	}
	n.mu.Unlock()
	if n.root.layouter != nil {
		names = append(names, meta.LayoutXattr)
	}
	slices.Sort(names)
	var b []byte
	privileged := -1 // unknown until a trusted.* name needs it
	for _, k := range names {
		if meta.XattrTrusted(k) {
			if privileged < 0 {
				privileged = 0
				if callerHasSysAdmin(ctx) {
					privileged = 1
				}
			}
			if privileged == 0 {
				continue
			}
		}
		b = append(append(b, k...), 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), syscall.ERANGE
	}
	return uint32(copy(dest, b)), 0
}

// Setxattr stores a user.* or trusted.* attribute persistently (the kernel
// lets only CAP_SYS_ADMIN set trusted.*); other namespaces are ENOTSUP.
func (n *Image) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if n.root.readOnly {
		return syscall.EROFS
	}
	if attr == meta.LayoutXattr {
		return n.setLayout(ctx, string(data))
	}
	if !meta.XattrStored(attr) {
		return syscall.ENOTSUP
	}
	if !meta.XattrNameValid(attr) {
		return syscall.EINVAL
	}
	if len(attr) > meta.MaxXattrName {
		return syscall.ERANGE
	}
	if len(data) > meta.MaxXattrValue {
		return syscall.E2BIG
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	_, exists := n.attrs.Xattrs[attr]
	if flags&unix.XATTR_CREATE != 0 && exists {
		return syscall.EEXIST
	}
	if flags&unix.XATTR_REPLACE != 0 && !exists {
		return syscall.ENODATA
	}
	total := len(attr) + len(data)
	for k, v := range n.attrs.Xattrs {
		if k != attr {
			total += len(k) + len(v)
		}
	}
	if total > meta.MaxXattrTotal {
		return syscall.ENOSPC
	}
	was, wasWritten := n.attrs.Clone(), n.written.Load()
	if n.attrs.Xattrs == nil {
		n.attrs.Xattrs = map[string][]byte{}
	}
	n.attrs.Xattrs[attr] = append([]byte(nil), data...)
	n.attrs.Ctime = time.Now()
	errno := n.persistFlushedLocked(ctx, "flush before setxattr")
	if errno != 0 {
		// Not saved (the VG's metadata area kept for its own changes,
		// say): the xattr is not set, and later saves of the size and
		// times do not carry it and fail with it (as in Setattr).
		n.attrs = was
		if wasWritten {
			n.written.Store(true)
		}
	}
	return errno
}

// Removexattr deletes a stored attribute.
func (n *Image) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if n.root.readOnly {
		return syscall.EROFS
	}
	if !meta.XattrStored(attr) {
		return unstoredXattr(attr)
	}
	if attr == meta.LayoutXattr {
		return syscall.EPERM // a volume always has a layout: set "linear"
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.attrs.Xattrs[attr]; !ok {
		return syscall.ENODATA
	}
	delete(n.attrs.Xattrs, attr)
	n.attrs.Ctime = time.Now()
	return n.persistFlushedLocked(ctx, "flush before removexattr")
}
