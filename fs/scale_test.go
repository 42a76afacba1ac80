package fs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// listDriver is a driver of n volumes held in memory that counts its
// calls: what the fs layer costs per file, without any real driver.
type listDriver struct {
	vols           []volmap.Volume
	lists, lookups atomic.Int64
	byName         map[string]volmap.Volume
}

func newListDriver(n int) *listDriver {
	d := &listDriver{byName: map[string]volmap.Volume{}}
	now := time.Now()
	for i := range n {
		v := volmap.Volume{Name: fmt.Sprintf("img%04d", i), ID: fmt.Sprintf("id-%d", i), Size: 4 << 20, Used: -1,
			Attrs: meta.Attrs{Mode: 0o600, Size: -1, Atime: now, Mtime: now, Ctime: now}}
		d.vols = append(d.vols, v)
		d.byName[v.Name] = v
	}
	return d
}

func (d *listDriver) List(context.Context) ([]volmap.Volume, error) {
	d.lists.Add(1)
	return slices.Clone(d.vols), nil
}

func (d *listDriver) Lookup(_ context.Context, name string) (volmap.Volume, error) {
	d.lookups.Add(1)
	v, ok := d.byName[name]
	if !ok {
		return v, volmap.ErrNotFound
	}
	return v, nil
}

func (d *listDriver) Open(context.Context, string, int) (*os.File, error) {
	return nil, volmap.ErrNotFound
}

func (d *listDriver) SetAttrs(context.Context, string, meta.Attrs) error { return nil }

// TestScaleListing times `ls -l` of a thousand files on the host (the fs
// layer only: the driver answers from memory) and reports the memory of
// a node; it asserts the calls into the driver, one List per listing and
// one Lookup per file at most, and the FUSE requests: a few READDIRPLUS
// and a handful of GETXATTR, not one per file (`ls -l` asks each file for
// its ACL and SELinux label until the file system says it has none).
func TestScaleListing(t *testing.T) {
	testutil.RequireRoot(t)
	const files = 1000
	d := newListDriver(files)
	mnt := t.TempDir()
	root := NewRoot(Options{Driver: d, Log: slog.New(slog.DiscardHandler)})
	srv, err := Mount(mnt, root, MountOptions{})
	if err != nil {
		t.Skipf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Error(err)
		}
		srv.Wait()
	})
	// The heap the nodes take: measured from the mounted server (its
	// request buffers are not per file).
	var before runtime.MemStats
	runtime.GC() // twice: the second frees what sync.Pools kept from the first
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i, what := range []string{"cold", "warm", "warm"} {
		lists, lookups := d.lists.Load(), d.lookups.Load()
		reqs := root.stats.Snapshot().Ops
		start := time.Now()
		out, err := exec.Command("ls", "-l", mnt).Output()
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(out), "\n-"); n != files {
			t.Fatalf("ls -l listed %d files", n)
		}
		dl, dk := d.lists.Load()-lists, d.lookups.Load()-lookups
		total, ops := requestsSince(reqs, root.stats.Snapshot().Ops)
		t.Logf("ls -l (%s, run %d) of %d files: %v; driver: %d List, %d Lookup; %d FUSE requests %v",
			what, i+1, files, took, dl, dk, total, ops)
		testutil.Bench(t, "host", "lsl_"+what+"_ms", float64(took.Microseconds())/1000,
			"lsl_requests", total, "lsl_getxattr", ops["getxattr"])
		if dl > 1 || dk > 2*files {
			t.Errorf("ls -l called List %d times and Lookup %d times; want at most 1 and %d", dl, dk, 2*files)
		}
		if ops["getxattr"] > 10 || ops["lookup"] > 0 {
			t.Errorf("ls -l made %d GETXATTR and %d LOOKUP requests; want a handful and none (READDIRPLUS serves)",
				ops["getxattr"], ops["lookup"])
		}
	}
	var after runtime.MemStats
	runtime.GC() // twice: the second frees what sync.Pools kept from the first
	runtime.GC()
	runtime.ReadMemStats(&after)
	perFile := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / files / 1024
	t.Logf("Go heap with %d nodes known to the kernel: %.2f KiB per file", files, perFile)
	testutil.Bench(t, "host", "heap_kib_per_file", perFile)
}

// requestsSince returns the FUSE requests served between two snapshots of
// a mount's counters: their total and their count per operation.
func requestsSince(before, after map[string]OpCounts) (int, map[string]int) {
	total, ops := 0, map[string]int{}
	for op, c := range after {
		if n := int(c.Requests - before[op].Requests); n > 0 {
			ops[op] = n
			total += n
		}
	}
	return total, ops
}
