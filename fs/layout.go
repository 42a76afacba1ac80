package fs

import (
	"context"
	"log/slog"
	"syscall"
	"time"

	"github.com/volfs/volfs/volmap"
)

// convertTimeout bounds a layout conversion asked through
// trusted.volfs.layout (lvconvert itself is quick: new images sync in the
// background).
const convertTimeout = 5 * time.Minute

// getLayout answers trusted.volfs.layout: the layout a pending file will be
// created with, or the one its volume has. The kernel lets only
// CAP_SYS_ADMIN read trusted.* attributes.
func (n *Image) getLayout(dest []byte) (uint32, syscall.Errno) {
	lo := n.root.layouter
	if lo == nil {
		return 0, syscall.ENODATA
	}
	n.mu.Lock()
	l := n.vol.Layout
	if n.pending {
		l = n.layout
		if l.Type == "" {
			l = lo.DefaultLayout()
		}
	}
	n.mu.Unlock()
	if l.Type == "" {
		return 0, syscall.ENODATA
	}
	v := l.String()
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// setLayout sets trusted.volfs.layout: a pending file's volume will be
// created with that layout; an existing volume is converted in place,
// outside the node's lock (reads and writes go on meanwhile; LVM suspends
// the device briefly). Refusals name the reason in the log.
func (n *Image) setLayout(ctx context.Context, value string) syscall.Errno {
	lo := n.root.layouter
	if lo == nil {
		return syscall.ENOTSUP
	}
	l, err := volmap.ParseLayout(value)
	n.mu.Lock()
	name, pending, gone := n.name, n.pending, n.gone
	n.mu.Unlock()
	if err != nil {
		return n.root.toErrno("set layout", name, err)
	}
	if gone {
		return syscall.ESTALE
	}
	if pending {
		if err := lo.CheckLayout(ctx, l); err != nil {
			return n.root.toErrno("set layout", name, err)
		}
		n.mu.Lock()
		if n.pending {
			n.layout = l
			n.mu.Unlock()
			n.root.log.Info("layout set for a new file", slog.String("volume", name), slog.String("layout", l.String()))
			return 0
		}
		name = n.name // created meanwhile (a write raced the setxattr): convert
		n.mu.Unlock()
	}
	cctx, cancel := context.WithTimeout(ctx, convertTimeout)
	defer cancel()
	n.root.log.Info("converting layout", slog.String("volume", name), slog.String("layout", l.String()))
	if err := lo.Convert(cctx, name, l); err != nil {
		return n.root.toErrno("convert layout", name, err)
	}
	v, err := n.root.drv.Lookup(ctx, name)
	n.mu.Lock()
	if err == nil && v.ID == n.vol.ID {
		n.vol.Layout = v.Layout
	}
	n.changedLocked()
	n.mu.Unlock()
	return 0
}
