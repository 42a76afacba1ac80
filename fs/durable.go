package fs

import (
	"context"
	"syscall"

	"golang.org/x/sys/unix"
)

// flushMetaOnClose makes what close(2) returned survive a crash of the
// server: FLUSH is the only synchronous request of a close (RELEASE is
// sent after close(2) has returned, and a server killed in between never
// sees it). It gives a still-lazy file its volume (a `touch`ed file
// exists after a crash) and persists a logical size that changed, after
// flushing the device so the size never covers bytes still in a cache
// (ext4's data=ordered promise: a size on disk has its data on disk, not
// a previous volume's). Nothing else runs at FLUSH, which also comes at
// every close of an inherited fd: an unchanged file costs a lock.
// Trimming the growth step (an lvreduce) stays at the last close, and
// mtime from writes is persisted then too (and by fsync and unmount).
func (n *Image) flushMetaOnClose(ctx context.Context) syscall.Errno {
	if n.root.readOnly {
		return 0
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.gone:
		return 0
	case n.pending:
		sz := max(n.size.Load(), 1)
		return n.createLocked(ctx, sz, sz)
	case !n.sizeChangedLocked():
		return 0
	}
	if d := n.dev.Load(); d != nil {
		if err := unix.Fdatasync(int(d.buffered.Fd())); err != nil {
			return n.root.toErrno("flush on close", n.name, err)
		}
	}
	return n.persistLocked(ctx)
}
