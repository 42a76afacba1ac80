package fs

import (
	"context"
	"encoding/json"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/volfs/volfs/internal/control"
	"github.com/volfs/volfs/internal/procfs"
	"github.com/volfs/volfs/volmap"
)

// ServerInfo is what a server says of itself in `volfs status`.
type ServerInfo struct {
	Mount   string
	Source  string // the VG, VG/POOL, or the device globs
	Version string
}

// Inspector answers what the CLI (volfs ls, volfs status) and metrics ask
// a running mount: its files and who holds them, its counters, its pools.
type Inspector struct {
	root *Root
	info ServerInfo

	poolMu  sync.Mutex
	pools   []volmap.Pool
	poolErr error
	poolAt  time.Time
}

// NewInspector returns the inspector of root.
func NewInspector(root *Root, info ServerInfo) *Inspector {
	return &Inspector{root: root, info: info}
}

// Control ops.
const (
	OpLs     = "ls"
	OpStatus = "status"
)

// Register serves ls and status on the mount's control socket.
func (in *Inspector) Register(s *control.Server) {
	s.Handle(OpLs, func(ctx context.Context, _ json.RawMessage, _ func(control.Progress)) (any, error) {
		return in.Listing(ctx)
	})
	s.Handle(OpStatus, func(ctx context.Context, _ json.RawMessage, _ func(control.Progress)) (any, error) {
		return in.Status(ctx), nil
	})
}

// Info is what the server said of itself.
func (in *Inspector) Info() ServerInfo { return in.info }

// Stats returns the mount's counters.
func (in *Inspector) Stats() StatsSnapshot { return in.root.stats.Snapshot() }

// poolTTL is how long a pool report is reused: a scrape every few seconds
// must not run two lvm commands each time.
const poolTTL = 5 * time.Second

// poolTimeout bounds the lvm commands of one pool report (a VG lock held
// by another tool must not hang volfs status).
const poolTimeout = 20 * time.Second

// Pools reports the driver's pools (none if it has none), at most poolTTL
// old.
func (in *Inspector) Pools(ctx context.Context) ([]volmap.Pool, error) {
	pr, ok := in.root.drv.(volmap.PoolReporter)
	if !ok {
		return nil, nil
	}
	in.poolMu.Lock()
	defer in.poolMu.Unlock()
	if !in.poolAt.IsZero() && time.Since(in.poolAt) < poolTTL {
		return in.pools, in.poolErr
	}
	ctx, cancel := context.WithTimeout(ctx, poolTimeout)
	defer cancel()
	in.pools, in.poolErr = pr.Pools(ctx)
	in.poolAt = time.Now()
	return in.pools, in.poolErr
}

// Holder is a process with a file of the mount open.
type Holder = procfs.Process

// FileInfo is one file in `volfs ls`.
type FileInfo struct {
	Name string `json:"name"`
	// Size is the file's size; Used what its volume takes from the VG or
	// pool (a thin volume's mapped bytes, -1 if unknown because the volume
	// is inactive; a linear volume's whole size).
	Size int64 `json:"size"`
	Used int64 `json:"used"`
	volmap.Details
	// Pending: created, its volume not made yet (it is at the first
	// write or the last close).
	Pending bool `json:"pending,omitempty"`
	// Busy: a change of the file's volume is under way (an lvm command
	// or a device flush holds it: creating, resizing, renaming, saving
	// attributes); Size is then the size the file has now, and a
	// pending file's layout is not shown.
	Busy bool `json:"busy,omitempty"`
	// Handles are volfs's own open handles of the file (every open(2)
	// through the mount that is not closed yet).
	Handles int `json:"handles"`
	// Holders are the processes with the file open through the mount.
	Holders []Holder `json:"holders"`
}

// Listing is the answer to `volfs ls`.
type Listing struct {
	Mount  string     `json:"mount"`
	Source string     `json:"source"`
	Files  []FileInfo `json:"files"`
	Total  struct {
		Files int   `json:"files"`
		Size  int64 `json:"size"`
		Used  int64 `json:"used"`
	} `json:"total"`
	Pools []volmap.Pool `json:"pools"`
	// PoolsError says why the pools are missing, if they are.
	PoolsError string `json:"pools_error,omitempty"`
	// HoldersComplete is false when looking for holders in /proc took too
	// long (a process wedged in the kernel): the holders shown are the
	// ones found.
	HoldersComplete bool `json:"holders_complete"`
}

// holdersTimeout bounds the /proc scan of one ls.
const holdersTimeout = 3 * time.Second

// Listing describes every file, who has it open, and the pools.
func (in *Inspector) Listing(ctx context.Context) (*Listing, error) {
	r := in.root
	since := r.epoch.Load() // see Image.refresh
	vols, err := r.drv.List(ctx)
	if err != nil {
		return nil, err
	}
	l := &Listing{Mount: in.info.Mount, Source: in.info.Source, Files: []FileInfo{}, Pools: []volmap.Pool{}}
	r.mu.Lock()
	nodes := make(map[uint64]*Image, len(r.nodes))
	for ino, n := range r.nodes {
		nodes[ino] = n
	}
	pending := make(map[string]*Image, len(r.pending))
	for name, n := range r.pending {
		pending[name] = n
	}
	r.mu.Unlock()
	de, _ := r.drv.(volmap.Describer)
	seen := map[string]bool{}
	for _, v := range vols {
		f := FileInfo{Name: v.Name, Size: v.Size, Used: v.Size}
		if v.Attrs.Size >= 0 && v.Attrs.Size <= v.Size {
			f.Size = v.Attrs.Size
		}
		if v.Used >= 0 || v.Thin {
			f.Used = v.Used // -1: a thin volume LVM cannot tell (inactive)
		}
		if v.Thin {
			f.Kind = "thin"
		}
		if de != nil {
			if d, err := de.Describe(ctx, v.Name); err == nil {
				f.Details = d
			}
		}
		if n := nodes[inoOf(v.Identity())]; n != nil {
			// The size stat shows: the node's, unless another tool
			// resized the idle volume since (as Image.refresh decides).
			// The node may have changed its volume after the listing
			// was read (a last close trims it and records the size).
			// A node busy with a change is not waited for (an lvm
			// command takes seconds; a flush of a hung disk forever).
			f.Handles = int(n.opens.Load())
			if !n.mu.TryLock() {
				f.Size, f.Busy = n.size.Load(), true
				seen[v.Name] = true
				l.Files = append(l.Files, f)
				continue
			}
			newer := n.changed > since
			if !n.gone && (newer || n.opens.Load() > 0 || n.written.Load() || v.Size == n.devSize) {
				f.Size = n.size.Load()
			}
			if !n.gone && newer && !v.Thin {
				f.Used = n.devSize
			}
			n.mu.Unlock()
		}
		seen[v.Name] = true
		l.Files = append(l.Files, f)
	}
	for name, n := range pending {
		f := FileInfo{Name: name, Size: n.size.Load(), Pending: true, Handles: int(n.opens.Load())}
		if !n.mu.TryLock() {
			f.Busy = true // its volume being made, most likely
			if !seen[f.Name] {
				l.Files = append(l.Files, f)
			}
			continue
		}
		if lo := r.layouter; lo != nil {
			// The layout its volume is to be created with.
			l := n.layout
			if l.Type == "" {
				l = lo.DefaultLayout()
			}
			f.Layout = l.String()
		}
		n.mu.Unlock()
		if !seen[f.Name] {
			l.Files = append(l.Files, f)
		}
	}
	sort.Slice(l.Files, func(i, j int) bool { return l.Files[i].Name < l.Files[j].Name })
	hctx, cancel := context.WithTimeout(ctx, holdersTimeout)
	held, complete := procfs.FilesUnder(hctx, in.info.Mount)
	cancel()
	l.HoldersComplete = complete
	for i := range l.Files {
		f := &l.Files[i]
		f.Holders = held[f.Name]
		if f.Holders == nil {
			f.Holders = []Holder{}
		}
		l.Total.Files++
		l.Total.Size += f.Size
		l.Total.Used += max(f.Used, 0)
	}
	if pools, err := in.Pools(ctx); err != nil {
		l.PoolsError = err.Error()
	} else if pools != nil {
		l.Pools = pools
	}
	return l, nil
}

// Status is the answer to `volfs status`.
type Status struct {
	Mount     string    `json:"mount"`
	Source    string    `json:"source"`
	Version   string    `json:"version"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Uptime    float64   `json:"uptime_seconds"`
	Transport string    `json:"transport"` // "io_uring" or "/dev/fuse"
	ReadOnly  bool      `json:"read_only"`
	// OpenFiles are the files with open handles; OpenHandles the handles.
	OpenFiles   int `json:"open_files"`
	OpenHandles int `json:"open_handles"`
	// Requests and Errors are the totals over every operation in Ops.
	Requests     uint64              `json:"requests"`
	Errors       uint64              `json:"errors"`
	ReadBytes    uint64              `json:"read_bytes"`
	WrittenBytes uint64              `json:"written_bytes"`
	Ops          map[string]OpCounts `json:"ops"`
	Pools        []volmap.Pool       `json:"pools"`
	PoolsError   string              `json:"pools_error,omitempty"`
	// Degraded are the images whose RAID volume runs without one of its
	// images or parity (volmap.Details.Degraded).
	Degraded []DegradedImage `json:"degraded,omitempty"`
}

// DegradedImage is an image whose volume is degraded, and how.
type DegradedImage struct {
	Name   string `json:"name"`
	Layout string `json:"layout"`
	Health string `json:"health"`
}

// Status reports the server and its counters.
func (in *Inspector) Status(ctx context.Context) *Status {
	s := in.Stats()
	st := &Status{Mount: in.info.Mount, Source: in.info.Source, Version: in.info.Version, PID: os.Getpid(),
		Started: s.Start, Uptime: time.Since(s.Start).Seconds(), Transport: "/dev/fuse",
		ReadOnly: in.root.readOnly, ReadBytes: s.ReadBytes, WrittenBytes: s.WrittenBytes, Ops: s.Ops,
		Pools: []volmap.Pool{}}
	if s.IOURing {
		st.Transport = "io_uring"
	}
	for _, c := range s.Ops {
		st.Requests += c.Requests
		st.Errors += c.Errors
	}
	st.OpenFiles, st.OpenHandles = in.OpenFiles()
	st.Degraded = in.Degraded(ctx)
	if pools, err := in.Pools(ctx); err != nil {
		st.PoolsError = err.Error()
	} else if pools != nil {
		st.Pools = pools
	}
	return st
}

// Degraded lists the images whose volumes the driver says are degraded
// (from the driver's listing, at most its cache's age old).
func (in *Inspector) Degraded(ctx context.Context) []DegradedImage {
	de, ok := in.root.drv.(volmap.Describer)
	if !ok {
		return nil
	}
	vols, err := in.root.drv.List(ctx)
	if err != nil {
		return nil
	}
	var out []DegradedImage
	for _, v := range vols {
		if d, err := de.Describe(ctx, v.Name); err == nil && d.Degraded {
			out = append(out, DegradedImage{Name: v.Name, Layout: d.Layout, Health: d.Health})
		}
	}
	return out
}

// OpenFiles counts the files with open handles, and the handles.
func (in *Inspector) OpenFiles() (files, handles int) {
	r := in.root
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
		if o := int(n.opens.Load()); o > 0 {
			files++
			handles += o
		}
	}
	return files, handles
}
