package fs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// SnapshotDir is the directory of snapshots in the mount's root:
// SnapshotDir/IMAGE/NAME is a read-only file. Readdir of the root does
// not list it (rsync -a and cp -r of the mount skip it, as with ZFS's
// .zfs), lookup finds it, and no file may take its name.
const SnapshotDir = ".snapshots"

// reservedName reports whether name is one volfs keeps for itself.
func reservedName(name string) bool { return name == SnapshotDir }

// snapshotter is the driver's snapshot capability, or nil.
func (r *Root) snapshotter() volmap.Snapshotter {
	s, _ := r.drv.(volmap.Snapshotter)
	return s
}

// errnoError is an error with the errno it maps to, so that the control
// channel can pass it on (errors.As finds the errno).
type errnoError struct {
	err   error
	errno syscall.Errno
}

func (e *errnoError) Error() string   { return e.err.Error() }
func (e *errnoError) Unwrap() []error { return []error{e.err, e.errno} }

func (r *Root) opError(op, name string, err error) error {
	if err == nil {
		return nil
	}
	return &errnoError{err: err, errno: r.toErrno(op, name, err)}
}

func notSupported(what string) error {
	return fmt.Errorf("%s: this mount's driver has no snapshots (only --vg mounts do): %w", what, volmap.ErrNotSupported)
}

// quiesce flushes what volfs holds of an image before a snapshot or clone
// of it: the device's dirty pages and write cache (writes volfs answered
// are on the device) and the attributes only in memory. It returns the
// attributes the snapshot records. The lvm command runs afterwards,
// outside the image's lock: writes go on meanwhile, and the snapshot is
// crash-consistent (it holds at least every write answered before).
func (r *Root) quiesce(ctx context.Context, v volmap.Volume) (meta.Attrs, error) {
	r.mu.Lock()
	n := r.nodes[inoOf(v.Identity())]
	r.mu.Unlock()
	if n == nil {
		return v.Attrs, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	// Lock order: mu before syncMu. An error is recorded for the open
	// files' fsync (errSeq): the kernel tells it to this flush only.
	n.syncMu.Lock()
	var err error
	if d := n.acquireDevice(); d != nil {
		err = unix.Fdatasync(int(d.buffered.Fd()))
		d.release()
	}
	if err != nil {
		n.wbErr.set(r.toErrno("flush before snapshot", v.Name, err))
	}
	n.syncMu.Unlock()
	if err != nil {
		return meta.Attrs{}, fmt.Errorf("flush %s before the snapshot: %w", v.Name, err)
	}
	if errno := n.persistLocked(ctx); errno != 0 {
		return meta.Attrs{}, fmt.Errorf("save the attributes of %s before the snapshot: %w", v.Name, errno)
	}
	// The size is always recorded: "none" would mean the LV's size at
	// the lvcreate, and a write past the end may grow the LV before it
	// (the lock is not held across the lvm command).
	a := n.attrs.Clone()
	a.Size = n.size.Load()
	return a, nil
}

// snapTimeout bounds each snapshot operation's lvm commands.
const snapTimeout = 2 * time.Minute

// CreateSnapshot takes a snapshot called name of image (see quiesce).
func (r *Root) CreateSnapshot(ctx context.Context, image, name string) (volmap.Snapshot, error) {
	sn := r.snapshotter()
	if sn == nil {
		return volmap.Snapshot{}, r.opError("snapshot", image, notSupported("snapshot of "+image))
	}
	ctx, cancel := context.WithTimeout(ctx, snapTimeout)
	defer cancel()
	v, err := r.drv.Lookup(ctx, image)
	if err != nil {
		return volmap.Snapshot{}, r.opError("snapshot", image, err)
	}
	a, err := r.quiesce(ctx, v)
	if err != nil {
		return volmap.Snapshot{}, r.opError("snapshot", image, err)
	}
	s, err := sn.CreateSnapshot(ctx, image, name, a)
	return s, r.opError("snapshot", image, err)
}

// Snapshots lists the snapshots of image.
func (r *Root) Snapshots(ctx context.Context, image string) ([]volmap.Snapshot, error) {
	sn := r.snapshotter()
	if sn == nil {
		return nil, r.opError("list snapshots", image, notSupported("snapshots of "+image))
	}
	v, err := r.drv.Lookup(ctx, image)
	if err != nil {
		return nil, r.opError("list snapshots", image, err)
	}
	s, err := sn.Snapshots(ctx, v.Identity())
	return s, r.opError("list snapshots", image, err)
}

// DeleteSnapshot removes image's snapshot name.
func (r *Root) DeleteSnapshot(ctx context.Context, image, name string) error {
	sn := r.snapshotter()
	if sn == nil {
		return r.opError("delete snapshot", image, notSupported("snapshots of "+image))
	}
	ctx, cancel := context.WithTimeout(ctx, snapTimeout)
	defer cancel()
	v, err := r.drv.Lookup(ctx, image)
	if err != nil {
		return r.opError("delete snapshot", image, err)
	}
	return r.opError("delete snapshot", image, sn.DeleteSnapshot(ctx, v.Identity(), name))
}

// Rollback gives image the data of its snapshot name, keeping the file's
// identity (inode number), mode, owner and xattrs; its size becomes the
// snapshot's, its mtime and ctime now. Refused with EBUSY while the image
// is open through the mount (the image's lock is held throughout, so
// nothing opens it meanwhile) or elsewhere.
func (r *Root) Rollback(ctx context.Context, image, name string) error {
	sn := r.snapshotter()
	if sn == nil {
		return r.opError("rollback", image, notSupported("rollback of "+image))
	}
	if r.readOnly {
		return r.opError("rollback", image, fmt.Errorf("rollback of %s: the mount is read-only: %w", image, volmap.ErrReadOnly))
	}
	ctx, cancel := context.WithTimeout(ctx, snapTimeout)
	defer cancel()
	v, err := r.drv.Lookup(ctx, image)
	if err != nil {
		return r.opError("rollback", image, err)
	}
	snaps, err := sn.Snapshots(ctx, v.Identity())
	if err != nil {
		return r.opError("rollback", image, err)
	}
	var snap *volmap.Snapshot
	for i := range snaps {
		if snaps[i].Name == name {
			snap = &snaps[i]
		}
	}
	if snap == nil {
		return r.opError("rollback", image, fmt.Errorf("rollback of %s: no snapshot %q (volfs snapshot list shows them): %w",
			image, name, volmap.ErrNotFound))
	}
	r.mu.Lock()
	n := r.nodes[inoOf(v.Identity())]
	r.mu.Unlock()
	a := v.Attrs.Clone()
	if n != nil {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.opens.Load() > 0 {
			return r.opError("rollback", image, fmt.Errorf("rollback of %s: the file is open through the mount (%d handles): "+
				"close it (stop the VM using it) first: %w", image, n.opens.Load(), volmap.ErrInUse))
		}
		a = n.attrs.Clone()
	}
	now := time.Now()
	a.Size, a.Mtime, a.Ctime = snap.Attrs.Size, now, now
	if err := sn.Rollback(ctx, image, name, a); err != nil {
		return r.opError("rollback", image, err)
	}
	if n != nil {
		n.changedLocked()
		if nv, err := r.drv.Lookup(ctx, image); err == nil {
			n.load(nv)
		}
	}
	r.log.Info("rolled back", slog.String("volume", image), slog.String("snapshot", name))
	return nil
}

// Clone makes dst a new, independent, writable file with the data of
// image (or of its snapshot snap), image's mode, owner and size, and an
// identity of its own: a thin clone where the driver can make one (a thin
// image), else a full copy in the server (cloneByCopy), whose progress
// (bytes copied) is told to progress if not nil.
func (r *Root) Clone(ctx context.Context, image, snap, dst string, progress func(done, total int64)) (volmap.Volume, error) {
	parent := ctx // the copy's own length, not snapTimeout, bounds it
	sn := r.snapshotter()
	if sn == nil {
		return volmap.Volume{}, r.opError("clone", image, notSupported("clone of "+image))
	}
	if r.readOnly {
		return volmap.Volume{}, r.opError("clone", dst, fmt.Errorf("clone to %s: the mount is read-only: %w", dst, volmap.ErrReadOnly))
	}
	if reservedName(dst) || cloneTemp(dst) {
		return volmap.Volume{}, r.opError("clone", dst, fmt.Errorf("clone to %s: the name is reserved: %w", dst, volmap.ErrInvalidName))
	}
	if err := r.checkNewName(dst); err != nil {
		return volmap.Volume{}, r.opError("clone", dst, fmt.Errorf("clone to %q: %w", dst, err))
	}
	ctx, cancel := context.WithTimeout(ctx, snapTimeout)
	defer cancel()
	r.mu.Lock()
	p := r.pending[dst]
	r.mu.Unlock()
	if _, err := r.drv.Lookup(ctx, dst); err == nil || p != nil {
		return volmap.Volume{}, r.opError("clone", dst, fmt.Errorf("clone to %s: the file exists: %w", dst, volmap.ErrExists))
	}
	v, err := r.drv.Lookup(ctx, image)
	if err != nil {
		return volmap.Volume{}, r.opError("clone", image, err)
	}
	var src meta.Attrs
	if snap == "" {
		if src, err = r.quiesce(ctx, v); err != nil {
			return volmap.Volume{}, r.opError("clone", image, err)
		}
	} else {
		snaps, err := sn.Snapshots(ctx, v.Identity())
		if err != nil {
			return volmap.Volume{}, r.opError("clone", image, err)
		}
		found := false
		for _, s := range snaps {
			if s.Name == snap {
				src, found = s.Attrs, true
			}
		}
		if !found {
			return volmap.Volume{}, r.opError("clone", image, fmt.Errorf("clone of %s: no snapshot %q: %w", image, snap, volmap.ErrNotFound))
		}
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	now := time.Now()
	a := meta.Attrs{ID: hex.EncodeToString(id), Mode: src.Mode, UID: src.UID, GID: src.GID, Size: src.Size,
		Atime: now, Mtime: now, Ctime: now}
	if snap == "" && !v.Thin {
		nv, err := r.cloneByCopy(parent, v, dst, a, progress)
		return nv, r.opError("clone", dst, err)
	}
	nv, err := sn.Clone(ctx, image, snap, dst, a)
	return nv, r.opError("clone", dst, err)
}

// refuseIfSnapshots keeps an image with snapshots: removing (or replacing)
// its volume would leave them without their image. The error names them.
func (r *Root) refuseIfSnapshots(ctx context.Context, op string, v volmap.Volume) syscall.Errno {
	sn := r.snapshotter()
	if sn == nil {
		return 0
	}
	snaps, err := sn.Snapshots(ctx, v.Identity())
	if err != nil {
		return r.toErrno(op, v.Name, err)
	}
	if len(snaps) == 0 {
		return 0
	}
	names := make([]string, len(snaps))
	for i, s := range snaps {
		names[i] = s.Name
	}
	r.log.Warn(op+" refused: the file has snapshots; delete them first (volfs snapshot delete MOUNT/IMAGE NAME, "+
		"or rm MOUNT/"+SnapshotDir+"/IMAGE/NAME)",
		slog.String("volume", v.Name), slog.String("snapshots", strings.Join(names, ", ")))
	return syscall.EBUSY
}

// snapRoot is the SnapshotDir directory: one directory per image with
// snapshots.
type snapRoot struct {
	gofs.Inode
	root *Root
}

var (
	_ gofs.NodeLookuper  = (*snapRoot)(nil)
	_ gofs.NodeReaddirer = (*snapRoot)(nil)
	_ gofs.NodeGetattrer = (*snapRoot)(nil)
)

const snapRootIno = 2

func (r *Root) lookupSnapshotDir(ctx context.Context, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if r.snapshotter() == nil {
		return nil, syscall.ENOENT
	}
	n := &snapRoot{root: r}
	n.fill(&out.Attr)
	return r.NewInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: snapRootIno}), 0
}

func (n *snapRoot) fill(out *fuse.Attr) {
	n.root.mu.Lock()
	defer n.root.mu.Unlock()
	n.root.fillDirAttr(out)
	out.Ino = snapRootIno
	out.Mode = syscall.S_IFDIR | 0o555
}

func (n *snapRoot) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(&out.Attr)
	return 0
}

func (n *snapRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	v, err := n.root.drv.Lookup(ctx, name)
	if err != nil {
		return nil, n.root.toErrno("lookup", name, err)
	}
	// go-fuse keeps the node it already has for this number, if any:
	// its origin is the same, its name is only used in messages.
	d := &snapImageDir{root: n.root, image: name, origin: v.Identity()}
	d.fill(&out.Attr)
	return n.NewInode(ctx, d, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: inoOf("snapdir:" + v.Identity())}), 0
}

func (n *snapRoot) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	vols, err := n.root.drv.List(ctx)
	if err != nil {
		return nil, n.root.toErrno("readdir", SnapshotDir, err)
	}
	sn := n.root.snapshotter()
	var ents []fuse.DirEntry
	for _, v := range vols {
		if s, err := sn.Snapshots(ctx, v.Identity()); err == nil && len(s) > 0 {
			ents = append(ents, fuse.DirEntry{Name: v.Name, Mode: syscall.S_IFDIR, Ino: inoOf("snapdir:" + v.Identity())})
		}
	}
	return gofs.NewListDirStream(ents), 0
}

// snapImageDir is SnapshotDir/IMAGE: the image's snapshots as read-only
// files; rm deletes one, mv inside the directory renames one.
type snapImageDir struct {
	gofs.Inode
	root   *Root
	origin string // the image's identity

	mu    sync.Mutex
	image string // the image's name when last looked up
}

var (
	_ gofs.NodeLookuper  = (*snapImageDir)(nil)
	_ gofs.NodeReaddirer = (*snapImageDir)(nil)
	_ gofs.NodeGetattrer = (*snapImageDir)(nil)
	_ gofs.NodeUnlinker  = (*snapImageDir)(nil)
	_ gofs.NodeRenamer   = (*snapImageDir)(nil)
)

func (d *snapImageDir) fill(out *fuse.Attr) {
	d.root.mu.Lock()
	d.root.fillDirAttr(out)
	d.root.mu.Unlock()
	out.Ino = inoOf("snapdir:" + d.origin)
	out.Mode = syscall.S_IFDIR | 0o755
}

func (d *snapImageDir) name() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.image
}

func (d *snapImageDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fill(&out.Attr)
	return 0
}

func (d *snapImageDir) find(ctx context.Context, name string) (volmap.Snapshot, syscall.Errno) {
	snaps, err := d.root.snapshotter().Snapshots(ctx, d.origin)
	if err != nil {
		return volmap.Snapshot{}, d.root.toErrno("lookup", d.name()+"/"+name, err)
	}
	for _, s := range snaps {
		if s.Name == name {
			return s, 0
		}
	}
	return volmap.Snapshot{}, syscall.ENOENT
}

func (d *snapImageDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	s, errno := d.find(ctx, name)
	if errno != 0 {
		return nil, errno
	}
	// go-fuse keeps the node it already has for this number, if any: a
	// snapshot's device and attributes never change, its name (after a
	// rename) is only used in messages.
	f := &snapFile{root: d.root, snap: s}
	f.fill(&out.Attr)
	return d.NewInode(ctx, f, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: inoOf("snap:" + s.ID)}), 0
}

func (d *snapImageDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	snaps, err := d.root.snapshotter().Snapshots(ctx, d.origin)
	if err != nil {
		return nil, d.root.toErrno("readdir", d.name(), err)
	}
	ents := make([]fuse.DirEntry, len(snaps))
	for i, s := range snaps {
		ents[i] = fuse.DirEntry{Name: s.Name, Mode: syscall.S_IFREG, Ino: inoOf("snap:" + s.ID)}
	}
	return gofs.NewListDirStream(ents), 0
}

// Unlink deletes a snapshot.
func (d *snapImageDir) Unlink(ctx context.Context, name string) syscall.Errno {
	if d.root.readOnly {
		return syscall.EROFS
	}
	ctx, cancel := context.WithTimeout(ctx, snapTimeout)
	defer cancel()
	return d.root.toErrno("delete snapshot", d.name()+"/"+name, d.root.snapshotter().DeleteSnapshot(ctx, d.origin, name))
}

// Rename renames a snapshot inside its image's directory; over an existing
// snapshot it fails with EEXIST (snapshots are not replaced silently).
func (d *snapImageDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if d.root.readOnly {
		return syscall.EROFS
	}
	if newParent.EmbeddedInode() != d.EmbeddedInode() {
		return syscall.EXDEV
	}
	if flags&^uint32(unixRenameNoReplace) != 0 {
		return syscall.EINVAL
	}
	ctx, cancel := context.WithTimeout(ctx, snapTimeout)
	defer cancel()
	return d.root.toErrno("rename snapshot", d.name()+"/"+name, d.root.snapshotter().RenameSnapshot(ctx, d.origin, name, newName))
}

// snapFile is a snapshot as a read-only file.
type snapFile struct {
	gofs.Inode
	root *Root

	mu   sync.Mutex
	snap volmap.Snapshot
}

var (
	_ gofs.NodeGetattrer = (*snapFile)(nil)
	_ gofs.NodeSetattrer = (*snapFile)(nil)
	_ gofs.NodeOpener    = (*snapFile)(nil)
)

func (f *snapFile) fill(out *fuse.Attr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.snap
	size := s.Size
	if s.Attrs.Size >= 0 && s.Attrs.Size <= s.Size {
		size = s.Attrs.Size
	}
	out.Ino = inoOf("snap:" + s.ID)
	out.Size = uint64(size)
	out.Blocks = uint64(size+511) / 512
	if s.Used >= 0 {
		out.Blocks = uint64(s.Used+511) / 512
	}
	out.Mode = syscall.S_IFREG | s.Attrs.Mode&^0o222
	out.Nlink = 1
	out.Uid, out.Gid = s.Attrs.UID, s.Attrs.GID
	out.SetTimes(&s.Attrs.Atime, &s.Attrs.Mtime, &s.Attrs.Ctime)
	out.Blksize = maxIO
}

func (f *snapFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fill(&out.Attr)
	return 0
}

// Setattr: a snapshot never changes.
func (f *snapFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

// Open activates the snapshot (the driver deactivates it at the last
// close); opening it for writing is EROFS.
func (f *snapFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	f.mu.Lock()
	s := f.snap
	f.mu.Unlock()
	sn := f.root.snapshotter()
	dev, err := sn.OpenSnapshot(ctx, s)
	if err != nil {
		return nil, 0, f.root.toErrno("open snapshot", s.Name, err)
	}
	size := s.Size
	if s.Attrs.Size >= 0 && s.Attrs.Size <= s.Size {
		size = s.Attrs.Size
	}
	return &snapHandle{f: f, snap: s, dev: dev, size: size}, 0, 0
}

// snapHandle is an open snapshot: its device, read-only.
type snapHandle struct {
	f    *snapFile
	snap volmap.Snapshot
	dev  *os.File
	size int64
}

var (
	_ gofs.FileReader   = (*snapHandle)(nil)
	_ gofs.FileWriter   = (*snapHandle)(nil)
	_ gofs.FileReleaser = (*snapHandle)(nil)
)

func (h *snapHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= h.size {
		return fuse.ReadResultData(nil), 0
	}
	if int64(len(dest)) > h.size-off {
		dest = dest[:h.size-off]
	}
	k, err := h.dev.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, h.f.root.toErrno("read snapshot", h.snap.Name, err)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

func (h *snapHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

func (h *snapHandle) Release(ctx context.Context) syscall.Errno {
	h.dev.Close()
	h.f.root.snapshotter().CloseSnapshot(context.WithoutCancel(ctx), h.snap)
	return 0
}
