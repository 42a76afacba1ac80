package fs

import (
	"cmp"
	"context"
	"path/filepath"
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
	// IOUring serves requests through FUSE-over-io_uring where the
	// kernel has it (see ring.go); otherwise, or if it fails to start,
	// through /dev/fuse. Each queue keeps a P while it waits: run with
	// GOMAXPROCS of at least RingProcs().
	IOUring bool
	// FsName is the mount's source in /proc/self/mountinfo (findmnt,
	// df): what is mounted, such as the VG; "volfs" if empty.
	FsName string
}

// Server is a mounted, serving file system.
type Server struct {
	*fuse.Server
	ring *ringServer
}

// Wait returns once the mount is gone and every request is answered.
func (s *Server) Wait() {
	s.Server.Wait()
	if s.ring != nil {
		s.ring.wait()
	}
}

// Mount mounts root at dir and returns the serving server; the caller waits
// on it (srv.Wait) and calls root.Shutdown afterwards.
func Mount(dir string, root *Root, mo MountOptions) (*Server, error) {
	// Other tools' changes (lvcreate, lvextend) show within a second.
	timeout := time.Second
	opts := &gofs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: new(time.Duration),
		MountOptions: fuse.MountOptions{
			FsName: cmp.Or(mo.FsName, "volfs"),
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
			ExtraCapabilities: fuse.CAP_ASYNC_DIO | fuse.CAP_DIRECT_IO_ALLOW_MMAP | fuse.CAP_ATOMIC_O_TRUNC,
			// Not IgnoreSecurityLabels: it answers the POSIX ACLs
			// ENODATA before Image.Getxattr can say ENOTSUP (see
			// unstoredXattr).
			// Replies of 1 MiB plus header do not fit the 1 MiB pipe splice
			// would use; every attempt fails and is logged.
			DisableSplice: true,
			DirectMount:   true,
			Debug:         mo.Debug,
		},
		RootStableAttr: &gofs.StableAttr{Ino: 1},
		// Node IDs are our stable inode numbers: the io_uring queues find
		// a request's image without go-fuse (Root.openImage).
		ExternalNodeID: true,
	}
	if root.readOnly {
		opts.MountOptions.Options = append(opts.MountOptions.Options, "ro")
	}
	// The ring aborts the connection if a queue fails: it finds it by
	// the mount point's absolute path.
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	s := &Server{}
	root.stats.start = time.Now()
	var fsys fuse.RawFileSystem = &statsFS{RawFileSystem: gofs.NewNodeFS(root, opts), st: &root.stats}
	if mo.IOUring && enableURing(root.log) && ringUsable(root.log) {
		opts.MountOptions.ExtraCapabilities |= fuse.CAP_OVER_IO_URING
		fsys = &ringInit{RawFileSystem: fsys, start: func(srv *fuse.Server, rawFS fuse.RawFileSystem) {
			s.ring = startRing(srv, rawFS, &opts.MountOptions, root, absDir)
		}}
	}
	srv, err := fuse.NewServer(fsys, dir, &opts.MountOptions)
	if err != nil {
		return nil, err
	}
	s.Server = srv
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, err
	}
	root.startCommitter()
	return s, nil
}

// Shutdown persists what is still only in memory (mtime from writes,
// logical sizes) and closes every device. Call it after the server stopped.
func (r *Root) Shutdown(ctx context.Context) {
	r.stopCommitter()
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
		if n.opens.Load() > 0 || n.dev.Load() != nil || n.pending {
			n.opens.Store(0)
			n.lastCloseLocked(ctx)
		} else {
			n.persistLocked(ctx)
		}
		n.mu.Unlock()
	}
}
