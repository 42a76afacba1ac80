package fs

import (
	"context"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// MountOptions are the FUSE-level settings of a mount.
type MountOptions struct {
	// Debug traces every FUSE request to the log.
	Debug bool
	// AllowOther lets users other than root open files (the hypervisor's
	// user); the kernel still checks each file's mode and owner.
	AllowOther bool
}

// Mount mounts root at dir and returns the serving server; the caller waits
// on it (srv.Wait) and calls root.Shutdown afterwards.
func Mount(dir string, root *Root, mo MountOptions) (*fuse.Server, error) {
	// Other tools' changes (lvcreate, lvextend) show within a second.
	timeout := time.Second
	opts := &gofs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: new(time.Duration),
		MountOptions: fuse.MountOptions{
			FsName: "volfs",
			Name:   "volfs",
			// default_permissions: the kernel enforces each file's mode
			// and owner. The server runs as root and opens devices
			// itself; without it any local user could read every disk.
			Options:    []string{"default_permissions"},
			AllowOther: mo.AllowOther,
			MaxWrite:   maxIO,
			// Async direct I/O is background I/O for FUSE: at the
			// default of 12, libaio at depth 32 would wait in the kernel.
			MaxBackground: 128,
			// CAP_ASYNC_DIO: without it the kernel serializes libaio
			// requests of one file (depth 32 behaves as depth 1).
			// CAP_DIRECT_IO_ALLOW_MMAP: mmap works despite
			// FOPEN_DIRECT_IO. CAP_ATOMIC_O_TRUNC: O_TRUNC reaches open,
			// where a device file can ignore it as a device does.
			ExtraCapabilities:    fuse.CAP_ASYNC_DIO | fuse.CAP_DIRECT_IO_ALLOW_MMAP | fuse.CAP_ATOMIC_O_TRUNC,
			IgnoreSecurityLabels: true,
			// Replies of 1 MiB plus header do not fit the 1 MiB pipe splice
			// would use; every attempt fails and is logged.
			DisableSplice: true,
			DirectMount:   true,
			Debug:         mo.Debug,
		},
		RootStableAttr: &gofs.StableAttr{Ino: 1},
	}
	if root.readOnly {
		opts.MountOptions.Options = append(opts.MountOptions.Options, "ro")
	}
	return gofs.Mount(dir, root, opts)
}

// Shutdown persists what is still only in memory (mtime from writes,
// logical sizes) and closes every device. Call it after the server stopped.
func (r *Root) Shutdown(ctx context.Context) {
	r.mu.Lock()
	nodes := make([]*Image, 0, len(r.nodes)+len(r.pending))
	for _, n := range r.nodes {
		nodes = append(nodes, n)
	}
	for _, n := range r.pending {
		nodes = append(nodes, n)
	}
	r.mu.Unlock()
	for _, n := range nodes {
		n.mu.Lock()
		if n.opens > 0 || n.dev.Load() != nil || n.pending {
			n.opens = 0
			n.lastCloseLocked(ctx)
		} else {
			n.persistLocked(ctx)
		}
		n.mu.Unlock()
	}
}
