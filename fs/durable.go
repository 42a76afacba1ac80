package fs

import (
	"context"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
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
func (n *Image) flushMetaOnClose(ctx context.Context, h *handle) syscall.Errno {
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
	// Lock order: mu before syncMu (syncDevice), as at the last close.
	if errno := h.syncDevice("flush on close", unix.Fdatasync, false); errno != 0 {
		return errno
	}
	return n.persistLocked(ctx)
}

// replaceWhileOpen renames the file src over this file, which volfs has
// open, when the driver can do it in one crash-safe step
// (volmap.DetachReplacer): this file's volume is detached and purged at
// its last close. Detach and then Rename, two steps, would leave the
// target name empty if the server died between them, and the detached
// volume would be purged by the next mount. done is false when this
// path does not apply (no such driver, or the file is not open).
func (n *Image) replaceWhileOpen(ctx context.Context, src, name string) (done bool, err error) {
	dr, ok := n.root.drv.(volmap.DetachReplacer)
	if !ok {
		return false, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.opens.Load() == 0 || n.gone {
		return false, nil
	}
	token, err := dr.ReplaceDetach(ctx, src, name)
	n.changedLocked()
	if err != nil {
		return false, err
	}
	if token == "" {
		// The driver found no volume to replace (renamed by another
		// tool meanwhile): a plain rename, this file keeps its volume.
		return true, nil
	}
	n.detached = token
	n.gone = true
	return true, nil
}

// commitInterval is how often the size of a file that stays open while it
// grows is persisted (ext4 commits its journal every 5 s): a crash loses
// at most that much of a size that no fsync or close recorded.
const commitInterval = 5 * time.Second

// committer persists, every commitInterval, the changed sizes of open
// files. Only sizes: the mtime of writes waits for fsync, close and
// unmount (a tag change per interval of every busy image would rewrite
// the VG metadata for nothing a crash needs).
type committer struct {
	once sync.Once
	stop chan struct{}
	done chan struct{}
}

// startCommitter runs the committer until stopCommitter.
func (r *Root) startCommitter() {
	if r.readOnly {
		return
	}
	r.commit.once.Do(func() {
		r.commit.stop, r.commit.done = make(chan struct{}), make(chan struct{})
		go func() {
			defer close(r.commit.done)
			t := time.NewTicker(commitInterval)
			defer t.Stop()
			for {
				select {
				case <-r.commit.stop:
					return
				case <-t.C:
					r.commitSizes()
				}
			}
		}()
	})
}

// stopCommitter stops the committer and waits for it.
func (r *Root) stopCommitter() {
	if r.commit.stop == nil {
		return
	}
	select {
	case <-r.commit.stop:
	default:
		close(r.commit.stop)
	}
	<-r.commit.done
}

// commitSizes persists the changed size of every open file.
func (r *Root) commitSizes() {
	r.open.Range(func(_, v any) bool {
		n, _ := v.(*Image)
		if n == nil {
			return true
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.gone || n.pending || !n.sizeChangedLocked() {
			return true
		}
		// Lock order: mu before syncMu. The error is recorded for the
		// open files' fsync and close (errSeq), never swallowed here.
		n.syncMu.Lock()
		var err error
		if d := n.acquireDevice(); d != nil {
			err = unix.Fdatasync(int(d.buffered.Fd()))
			d.release()
		}
		if err != nil {
			n.wbErr.set(r.toErrno("periodic flush", n.name, err))
		}
		n.syncMu.Unlock()
		if err != nil {
			return true
		}
		n.persistLocked(ctx)
		return true
	})
}
