package fs

import (
	"context"
	"hash/fnv"
	"log/slog"
	"sync"
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
}

// Root is the mount's only directory: one regular file per volume.
type Root struct {
	gofs.Inode

	drv      volmap.Driver
	log      *slog.Logger
	readOnly bool

	mu sync.Mutex
	// nodes are the image nodes the kernel knows, by inode number, so that
	// a lookup refreshes the node it already has instead of a twin.
	nodes map[uint64]*Image
	// pending are files created but not yet backed by a volume (creation is
	// lazy), by name.
	pending map[string]*Image
}

var (
	_ gofs.NodeLookuper  = (*Root)(nil)
	_ gofs.NodeReaddirer = (*Root)(nil)
	_ gofs.NodeGetattrer = (*Root)(nil)
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
	return &Root{drv: o.Driver, log: o.Log, readOnly: o.ReadOnly,
		nodes: map[uint64]*Image{}, pending: map[string]*Image{}}
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

// node returns the live node for a volume, refreshed from v, creating it
// when the kernel does not know it yet.
func (r *Root) node(ctx context.Context, v volmap.Volume) *gofs.Inode {
	ino := inoOf(v.Identity())
	r.mu.Lock()
	n := r.nodes[ino]
	if n == nil {
		n = newImage(r, v)
		r.nodes[ino] = n
	}
	r.mu.Unlock()
	n.refresh(v)
	if in := n.EmbeddedInode(); in.StableAttr().Ino != 0 {
		return in
	}
	return r.NewInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
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
	r.mu.Lock()
	p := r.pending[name]
	r.mu.Unlock()
	if p != nil {
		p.fillAttr(&out.Attr)
		return p.EmbeddedInode(), 0
	}
	v, err := r.drv.Lookup(ctx, name)
	if err != nil {
		return nil, r.toErrno("lookup", name, err)
	}
	in := r.node(ctx, v)
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
	seen := map[string]bool{}
	for _, v := range vols {
		ents = append(ents, fuse.DirEntry{Name: v.Name, Mode: syscall.S_IFREG, Ino: inoOf(v.Identity())})
		seen[v.Name] = true
	}
	r.mu.Lock()
	for name, p := range r.pending {
		if !seen[name] {
			ents = append(ents, fuse.DirEntry{Name: name, Mode: syscall.S_IFREG, Ino: p.ino})
		}
	}
	r.mu.Unlock()
	return gofs.NewListDirStream(ents), 0
}

// Getattr describes the root directory.
func (r *Root) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
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
	if _, ok := r.drv.(volmap.Creator); !ok {
		r.log.Warn("create refused: this driver exposes existing devices and cannot create volumes",
			slog.String("volume", name))
		return nil, nil, 0, syscall.EPERM
	}
	if v, ok := r.drv.(volmap.NameChecker); ok {
		if err := v.CheckName(name); err != nil {
			return nil, nil, 0, r.toErrno("create", name, err)
		}
	}
	if _, err := r.drv.Lookup(ctx, name); err == nil {
		return nil, nil, 0, syscall.EEXIST
	}
	now := time.Now()
	a := meta.Attrs{Mode: mode & 07777, Atime: now, Mtime: now, Ctime: now, Size: 0}
	if c, ok := fuse.FromContext(ctx); ok {
		a.UID, a.GID = c.Uid, c.Gid
	}
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

// Unlink removes a file's volume.
func (r *Root) Unlink(ctx context.Context, name string) syscall.Errno {
	if r.readOnly {
		return syscall.EROFS
	}
	r.mu.Lock()
	if p := r.pending[name]; p != nil {
		delete(r.pending, name)
		r.mu.Unlock()
		p.unlinked()
		return 0
	}
	r.mu.Unlock()
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
	r.mu.Lock()
	n := r.nodes[inoOf(v.Identity())]
	r.mu.Unlock()
	if n != nil && n.detach(ctx) {
		return 0
	}
	if n != nil {
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

// Rename renames a volume; over an existing file it replaces it.
func (r *Root) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
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
	if v, ok := r.drv.(volmap.NameChecker); ok {
		if err := v.CheckName(newName); err != nil {
			return r.toErrno("rename", newName, err)
		}
	}
	r.mu.Lock()
	p := r.pending[name]
	if p != nil {
		if _, exists := r.pending[newName]; exists && flags&unixRenameNoReplace != 0 {
			r.mu.Unlock()
			return syscall.EEXIST
		}
	}
	r.mu.Unlock()
	_, lerr := r.drv.Lookup(ctx, newName)
	targetExists := lerr == nil
	if targetExists && flags&unixRenameNoReplace != 0 {
		return syscall.EEXIST
	}
	if p != nil {
		if targetExists {
			// The pending file needs a volume to take the target's place.
			if errno := p.materialize(ctx); errno != 0 {
				return errno
			}
		} else {
			r.mu.Lock()
			delete(r.pending, name)
			if old := r.pending[newName]; old != nil {
				old.unlinked()
			}
			r.pending[newName] = p
			p.setName(newName)
			r.mu.Unlock()
			return 0
		}
	}
	rn, ok := r.drv.(volmap.Renamer)
	if !ok {
		r.log.Warn("rename refused: this driver exposes existing devices and cannot rename them",
			slog.String("volume", name), slog.String("to", newName))
		return syscall.EPERM
	}
	var err error
	if targetExists {
		rp, ok := r.drv.(volmap.Replacer)
		if !ok {
			return syscall.EPERM
		}
		err = rp.Replace(ctx, name, newName)
	} else {
		err = rn.Rename(ctx, name, newName)
	}
	if err != nil {
		return r.toErrno("rename", name, err)
	}
	v, err := r.drv.Lookup(ctx, newName)
	if err == nil {
		r.mu.Lock()
		n := r.nodes[inoOf(v.Identity())]
		r.mu.Unlock()
		if n != nil {
			n.setName(newName)
		}
	}
	return 0
}

const unixRenameNoReplace = 1 // RENAME_NOREPLACE
