package fs

import (
	"context"
	"log/slog"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// A volfs mount holds image files only. Directories, links, symlinks and
// special files are refused with EPERM, what the kernel answers for a file
// system without the operation (vfs_mkdir, vfs_link, vfs_symlink,
// vfs_mknod); go-fuse would answer ENOTSUP.
var (
	_ gofs.NodeMkdirer   = (*Root)(nil)
	_ gofs.NodeMknoder   = (*Root)(nil)
	_ gofs.NodeLinker    = (*Root)(nil)
	_ gofs.NodeSymlinker = (*Root)(nil)
)

func (r *Root) refuse(op, name string) syscall.Errno {
	if r.readOnly {
		return syscall.EROFS
	}
	r.log.Info(op+" refused: a volfs mount holds only image files", slog.String("name", name))
	return syscall.EPERM
}

// Mkdir refuses directories.
func (r *Root) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, r.refuse("mkdir", name)
}

// Mknod refuses device nodes, FIFOs and sockets (and regular files made
// with mknod(2): open(O_CREAT) makes those).
func (r *Root) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, r.refuse("mknod", name)
}

// Link refuses hard links: a volume has one name.
func (r *Root) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, r.refuse("link", name)
}

// Symlink refuses symbolic links.
func (r *Root) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, r.refuse("symlink", name)
}
