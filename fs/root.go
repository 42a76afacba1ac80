package fs

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// Options configure a volfs file system.
type Options struct {
	Driver   volmap.Driver
	Log      *slog.Logger
	ReadOnly bool
	// Defaults are the owner and mode of new files and of volumes with
	// nothing recorded (see defaults.go).
	Defaults Defaults
}

// Root is the mount's only directory: one regular file per volume.
type Root struct {
	gofs.Inode

	drv      volmap.Driver
	layouter volmap.Layouter // drv's, nil if it has no layouts
	log      *slog.Logger
	readOnly bool
	defaults Defaults

	mu sync.Mutex
	// nodes are the image nodes the kernel knows, by inode number, so that
	// a lookup refreshes the node it already has instead of a twin.
	nodes map[uint64]*Image
	// pending are files created but not yet backed by a volume (creation is
	// lazy), by name.
	pending map[string]*Image
	// dir holds the root directory's own mode, owner and times. No volume
	// stores them: they live as long as the mount (rsync -a sets the
	// times of the directory it copies into).
	dir meta.Attrs

	// epoch counts the nodes' changes of their volumes (Image.changed).
	epoch atomic.Uint64
	// wbErrs are write-back errors no fsync reported yet of images the
	// kernel forgot, by inode number (Image.OnForget).
	wbErrs map[uint64]uint64

	// open maps the inode number of each image with open handles to it.
	// Node IDs are inode numbers (Options.ExternalNodeID), so this is how
	// the io_uring queues find the image of a READ or WRITE without
	// go-fuse. A nil value marks a number two images claimed at once:
	// their requests take go-fuse's path.
	open sync.Map

	// commit persists the sizes of growing open files (durable.go).
	commit committer

	stats Stats // requests served (stats.go)

	// noSpaceAt is when a write failing with ENOSPC last logged its pool
	// (nospace.go), in Unix nanoseconds.
	noSpaceAt atomic.Int64
	// poolIOAt is the same for a write or flush failing with EIO on a
	// thin pool out of metadata space.
	poolIOAt atomic.Int64
}

func (r *Root) registerOpen(n *Image) {
	if v, loaded := r.open.LoadOrStore(n.ino, n); loaded && v != n {
		r.open.Store(n.ino, (*Image)(nil))
	}
}

func (r *Root) unregisterOpen(n *Image) { r.open.CompareAndDelete(n.ino, n) }

// openImage returns the open image whose inode number is ino, or nil.
func (r *Root) openImage(ino uint64) *Image {
	v, _ := r.open.Load(ino)
	n, _ := v.(*Image)
	return n
}

var (
	_ gofs.NodeLookuper  = (*Root)(nil)
	_ gofs.NodeReaddirer = (*Root)(nil)
	_ gofs.NodeGetattrer = (*Root)(nil)
	_ gofs.NodeSetattrer = (*Root)(nil)
	_ gofs.NodeStatfser  = (*Root)(nil)
	_ gofs.NodeCreater   = (*Root)(nil)
	_ gofs.NodeUnlinker  = (*Root)(nil)
	_ gofs.NodeRenamer   = (*Root)(nil)
)

// NewRoot returns the root node of a volfs file system.
func NewRoot(o Options) *Root {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	now := time.Now()
	layouter, _ := o.Driver.(volmap.Layouter)
	return &Root{drv: o.Driver, layouter: layouter, log: o.Log, readOnly: o.ReadOnly, defaults: o.Defaults,
		nodes: map[uint64]*Image{}, pending: map[string]*Image{},
		dir: meta.Attrs{Mode: 0o755, Atime: now, Mtime: now, Ctime: now}}
}

// inoOf derives a stable inode number from a volume's identity, so inode
// numbers survive remounts and renames.
func inoOf(id string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(id))
	ino := h.Sum64()
	if ino <= 1 { // 0 is invalid, 1 is the root
		ino += 2
	}
	return ino
}

// node returns the live node for a volume, refreshed from v (read from the
// driver at epoch since), creating it when the kernel does not know it yet.
func (r *Root) node(ctx context.Context, v volmap.Volume, since uint64) *gofs.Inode {
	ino := inoOf(v.Identity())
	r.mu.Lock()
	n := r.nodes[ino]
	if n == nil {
		n = newImage(r, v)
		r.nodes[ino] = n
		if e, ok := r.wbErrs[ino]; ok {
			n.wbErr.v.Store(e)
			delete(r.wbErrs, ino)
		}
	}
	r.mu.Unlock()
	n.refresh(v, since)
	if in := n.EmbeddedInode(); in.StableAttr().Ino != 0 {
		return in
	}
	return r.NewInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
}

func (r *Root) keepWritebackErr(ino, e uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.wbErrs == nil {
		r.wbErrs = map[uint64]uint64{}
	}
	r.wbErrs[ino] = e
}

func (r *Root) forget(n *Image) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nodes[n.ino] == n {
		delete(r.nodes, n.ino)
	}
}

// Lookup finds a volume (or a file created but not yet backed) by name.
func (r *Root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if reservedName(name) {
		return r.lookupSnapshotDir(ctx, out)
	}
	r.mu.Lock()
	p := r.pending[name]
	r.mu.Unlock()
	if p != nil {
		p.fillAttr(&out.Attr)
		return p.EmbeddedInode(), 0
	}
	since := r.epoch.Load()
	v, err := r.drv.Lookup(ctx, name)
	if err != nil {
		return nil, r.toErrno("lookup", name, err)
	}
	in := r.node(ctx, v, since)
	in.Operations().(*Image).fillAttr(&out.Attr)
	return in, 0
}

// Readdir lists every volume and every pending file.
func (r *Root) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	vols, err := r.drv.List(ctx)
	if err != nil {
		return nil, r.toErrno("readdir", "", err)
	}
	ents := make([]fuse.DirEntry, 0, len(vols))
	for _, v := range vols {
		ents = append(ents, fuse.DirEntry{Name: v.Name, Mode: syscall.S_IFREG, Ino: inoOf(v.Identity())})
	}
	r.mu.Lock()
	if len(r.pending) > 0 {
		listed := make(map[string]bool, len(vols))
		for _, v := range vols {
			listed[v.Name] = true
		}
		for name, p := range r.pending {
			if !listed[name] {
				ents = append(ents, fuse.DirEntry{Name: name, Mode: syscall.S_IFREG, Ino: p.ino})
			}
		}
	}
	r.mu.Unlock()
	return gofs.NewListDirStream(ents), 0
}

// Getattr describes the root directory.
func (r *Root) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fillDirAttr(&out.Attr)
	return 0
}

func (r *Root) fillDirAttr(out *fuse.Attr) {
	out.Ino = 1
	out.Mode = syscall.S_IFDIR | r.dir.Mode
	out.Nlink = 2
	out.Uid, out.Gid = r.dir.UID, r.dir.GID
	out.SetTimes(&r.dir.Atime, &r.dir.Mtime, &r.dir.Ctime)
}

// Setattr changes the root directory's mode, owner or times, in memory
// (see Root.dir).
func (r *Root) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if r.readOnly {
		return syscall.EROFS
	}
	if _, ok := in.GetSize(); ok {
		return syscall.EISDIR
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if m, ok := in.GetMode(); ok {
		r.dir.Mode = m & 07777
	}
	if uid, ok := in.GetUID(); ok {
		r.dir.UID = uid
	}
	if gid, ok := in.GetGID(); ok {
		r.dir.GID = gid
	}
	if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
		r.dir.Atime = now
	} else if t, ok := in.GetATime(); ok {
		r.dir.Atime = t
	}
	if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
		r.dir.Mtime = now
	} else if t, ok := in.GetMTime(); ok {
		r.dir.Mtime = t
	}
	r.dir.Ctime = now
	r.fillDirAttr(&out.Attr)
	return 0
}

// Statfs reports the driver's space (a VG, a thin pool, the devices).
func (r *Root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	out.Bsize = bsize
	out.Frsize = bsize
	out.NameLen = 255
	if sr, ok := r.drv.(volmap.SpaceReporter); ok {
		s, err := sr.Space(ctx)
		if err != nil {
			return r.toErrno("statfs", "", err)
		}
		out.Blocks = uint64(s.Total) / bsize
		out.Bfree = uint64(s.Free) / bsize
		out.Bavail = out.Bfree
	}
	if vols, err := r.drv.List(ctx); err == nil {
		out.Files = uint64(len(vols))
	}
	return 0
}

// Create makes a new file. Its volume is created lazily, when the file first
// needs bytes or is closed, so `qemu-img create` (open, then ftruncate) makes
// one volume of the right size.
func (r *Root) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if r.readOnly {
		return nil, nil, 0, syscall.EROFS
	}
	if reservedName(name) {
		return nil, nil, 0, syscall.EEXIST
	}
	if cloneTemp(name) {
		return nil, nil, 0, syscall.EPERM // the mount would remove it as a partial copy
	}
	if _, ok := r.drv.(volmap.Creator); !ok {
		r.log.Warn("create refused: this driver exposes existing devices and cannot create volumes",
			slog.String("volume", name))
		return nil, nil, 0, syscall.EPERM
	}
	if err := r.checkNewName(name); err != nil {
		return nil, nil, 0, r.toErrno("create", name, err)
	}
	if _, err := r.drv.Lookup(ctx, name); err == nil {
		return nil, nil, 0, syscall.EEXIST
	}
	if r.noRoom(ctx) {
		r.log.Warn("create refused: no free space for a new volume", slog.String("volume", name))
		return nil, nil, 0, syscall.ENOSPC
	}
	now := time.Now()
	a := meta.Attrs{Mode: mode & 07777, Atime: now, Mtime: now, Ctime: now, Size: 0}
	if c, ok := fuse.FromContext(ctx); ok {
		a.UID, a.GID = c.Uid, c.Gid
	}
	r.defaults.apply(&a)
	n := newPending(r, name, a)
	r.mu.Lock()
	if r.pending[name] != nil {
		r.mu.Unlock()
		return nil, nil, 0, syscall.EEXIST
	}
	r.pending[name] = n
	r.mu.Unlock()
	in := r.NewInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: n.ino})
	fh, fl, errno := n.Open(ctx, flags)
	if errno != 0 {
		r.mu.Lock()
		delete(r.pending, name)
		r.mu.Unlock()
		return nil, nil, 0, errno
	}
	n.fillAttr(&out.Attr)
	return in, fh, fl, 0
}

// noRoom reports whether the pool has no free space for a new volume.
// Creation is lazy, so without this check a full pool would only show at
// the first write, and `touch` would "succeed" with a file that vanishes
// at its last close. A cached space that shows room is taken as it is
// (volmap.SpaceHinter): the volume manager refuses a volume that does not
// fit when it is made (ENOSPC at the first write or the close), and many
// files created at once do not each wait for the pool to be read. Only a
// full pool is read again before a create is refused: another tool may
// have freed space since.
func (r *Root) noRoom(ctx context.Context) bool {
	sr, ok := r.drv.(volmap.SpaceReporter)
	if !ok {
		return false
	}
	if h, ok := r.drv.(volmap.SpaceHinter); ok {
		if s, ok := h.SpaceHint(); ok && (s.Total <= 0 || s.Free > 0) {
			return false
		}
	}
	s, err := sr.Space(ctx)
	return err == nil && s.Total > 0 && s.Free <= 0
}

// Unlink removes a file's volume.
func (r *Root) Unlink(ctx context.Context, name string) syscall.Errno {
	if r.readOnly {
		return syscall.EROFS
	}
	r.mu.Lock()
	p := r.pending[name]
	r.mu.Unlock()
	if p != nil && r.unlinkPending(name, p) {
		return 0
	}
	rm, ok := r.drv.(volmap.Remover)
	if !ok {
		r.log.Warn("remove refused: this driver exposes existing devices and cannot remove them",
			slog.String("volume", name))
		return syscall.EPERM
	}
	v, err := r.drv.Lookup(ctx, name)
	if err != nil {
		return r.toErrno("unlink", name, err)
	}
	if errno := r.refuseIfSnapshots(ctx, "remove", v); errno != 0 {
		return errno
	}
	r.mu.Lock()
	n := r.nodes[inoOf(v.Identity())]
	r.mu.Unlock()
	if n != nil {
		detached, errno := n.detach(ctx)
		if errno != 0 {
			return errno
		}
		if detached {
			return 0
		}
		// Without a way to keep the volume until the last close, volfs's
		// own open handles still never block a remove: their device fds
		// are closed first and they fail with ESTALE from then on.
		n.closeDevices()
	}
	if err := rm.Remove(ctx, name); err != nil {
		return r.toErrno("unlink", name, err)
	}
	if n != nil {
		n.unlinked()
	}
	return 0
}

// unlinkPending removes a file that has no volume yet. It holds the file's
// lock while it checks and removes it: a createLocked under way (a write,
// a close) finishes first, and then either the file is still pending
// (no volume will ever be made for the removed name) or it has its
// volume, and false tells the caller to remove it as any file.
func (r *Root) unlinkPending(name string, p *Image) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.pendingAsLocked(p, name) {
		return false
	}
	delete(r.pending, name)
	p.gone, p.pending = true, false
	return true
}

// pendingAsLocked reports whether p is a file without a volume listed
// under name. Both p.mu and r.mu are held.
func (r *Root) pendingAsLocked(p *Image, name string) bool {
	return p.pending && !p.gone && p.name == name && r.pending[name] == p
}

// renamePending renames a file that has no volume yet over a name that has
// none either (no file, or another pending file tp, which it replaces).
// Like unlinkPending it holds the files' locks, so a createLocked under
// way finishes first; done is false when one of them got its volume
// meanwhile, and the rename must then go to the driver. The kernel
// serializes renames, unlinks and creates in the directory, so taking
// p's lock and then tp's cannot deadlock with another rename.
func (r *Root) renamePending(p, tp *Image, name, newName string) (done bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if tp != nil {
		tp.mu.Lock()
		defer tp.mu.Unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.pendingAsLocked(p, name) || tp != nil && !r.pendingAsLocked(tp, newName) {
		return false
	}
	if tp == nil && r.pending[newName] != nil {
		return false
	}
	delete(r.pending, name)
	r.pending[newName] = p
	p.name = newName
	p.changedLocked()
	if tp != nil {
		tp.gone, tp.pending = true, false
	}
	return true
}

// Rename renames a volume; over an existing file it replaces it. Lock
// order: an Image's mu before the root's mu, never the other way.
func (r *Root) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return r.rename(ctx, name, newParent, newName, flags, false)
}

// rename is Rename; retried says that a pending file got its volume while
// the first attempt ran, and the state is being looked at again.
func (r *Root) rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32, retried bool) syscall.Errno {
	if r.readOnly {
		return syscall.EROFS
	}
	if newParent.EmbeddedInode() != r.EmbeddedInode() {
		return syscall.EXDEV
	}
	if flags&^uint32(unixRenameNoReplace) != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE, RENAME_WHITEOUT: volumes cannot swap names atomically
	}
	if name == newName {
		return 0
	}
	if reservedName(name) || reservedName(newName) || cloneTemp(name) || cloneTemp(newName) {
		return syscall.EPERM
	}
	if err := r.checkNewName(newName); err != nil {
		return r.toErrno("rename", newName, err)
	}
	r.mu.Lock()
	p, tp := r.pending[name], r.pending[newName]
	r.mu.Unlock()
	target, lerr := r.drv.Lookup(ctx, newName)
	targetExists := lerr == nil
	if (targetExists || tp != nil) && flags&unixRenameNoReplace != 0 {
		return syscall.EEXIST
	}
	if targetExists {
		if errno := r.refuseIfSnapshots(ctx, "rename over", target); errno != 0 {
			return errno
		}
	}
	if p != nil && !targetExists {
		// Both names are only in memory.
		if r.renamePending(p, tp, name, newName) {
			return 0
		}
		if retried {
			r.log.Error("rename of a file without a volume: its state kept changing",
				slog.String("volume", name), slog.String("to", newName))
			return syscall.EIO
		}
		// One of them got its volume meanwhile: look again.
		return r.rename(ctx, name, newParent, newName, flags, true)
	}
	if p != nil {
		// The pending file needs a volume to take the target's place.
		if errno := p.materialize(ctx); errno != 0 {
			return errno
		}
	}
	rn, ok := r.drv.(volmap.Renamer)
	if !ok {
		r.log.Warn("rename refused: this driver exposes existing devices and cannot rename them",
			slog.String("volume", name), slog.String("to", newName))
		return syscall.EPERM
	}
	// The renamed file's node, found before the rename from the cached
	// listing (afterwards the listing is stale and would cost an lvs).
	var sn *Image
	if src, err := r.drv.Lookup(ctx, name); err == nil {
		r.mu.Lock()
		sn = r.nodes[inoOf(src.Identity())]
		r.mu.Unlock()
	}
	var tn *Image // the replaced file's node, if the kernel knows it
	if targetExists {
		r.mu.Lock()
		tn = r.nodes[inoOf(target.Identity())]
		r.mu.Unlock()
	}
	var err error
	detached, renamed := false, false
	if tn != nil {
		// A replaced file that volfs has open (a running VM's disk) keeps
		// its volume until its last close, as a removed one does; the
		// volume's name is free at once.
		if renamed, err = tn.replaceWhileOpen(ctx, name, newName); err != nil {
			return r.toErrno("rename", name, err)
		}
		detached = renamed
		var errno syscall.Errno
		if !renamed {
			if detached, errno = tn.detach(ctx); errno != 0 {
				return errno
			}
		}
	}
	switch {
	case renamed:
	case !targetExists || detached:
		err = rn.Rename(ctx, name, newName)
		if err != nil && detached {
			// The request may be cancelled already (that may be why the
			// rename failed); the undo must run regardless, or the
			// replaced file's volume would be purged at its last close.
			if rerr := tn.reattach(context.WithoutCancel(ctx), newName); rerr != nil {
				r.log.Error("rename over an open file failed and the replaced file could not be put back; "+
					"its volume keeps a hidden name until its last close",
					slog.String("volume", newName), slog.Any("err", rerr))
			}
		}
	default:
		rp, ok := r.drv.(volmap.Replacer)
		if !ok {
			return syscall.EPERM
		}
		err = rp.Replace(ctx, name, newName)
	}
	if err != nil {
		return r.toErrno("rename", name, err)
	}
	if tn != nil && !detached {
		tn.unlinked() // its volume is gone
	}
	if tp != nil {
		// An open file created under newName but not yet backed by a
		// volume is replaced as well.
		r.mu.Lock()
		if r.pending[newName] == tp {
			delete(r.pending, newName)
		}
		r.mu.Unlock()
		tp.unlinked()
	}
	if sn != nil {
		sn.setName(newName)
	}
	return 0
}

const unixRenameNoReplace = 1 // RENAME_NOREPLACE

// nameMax is the longest file name (NAME_MAX), as statfs announces: FUSE
// passes names of up to 1024 bytes, and a driver may take them.
const nameMax = 255

// checkNewName says why name cannot be given to a file (created, renamed
// to, cloned to), or nil: what no file name may be (empty, "." or "..",
// a '/' or NUL, which only a control request can send), longer than
// nameMax, or what the driver refuses.
func (r *Root) checkNewName(name string) error {
	switch {
	case name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%w: %q is not a file name", volmap.ErrInvalidName, name)
	case len(name) > nameMax:
		return fmt.Errorf("%w: %q is %d bytes, the limit is %d", volmap.ErrNameTooLong, name, len(name), nameMax)
	}
	if v, ok := r.drv.(volmap.NameChecker); ok {
		return v.CheckName(name)
	}
	return nil
}
