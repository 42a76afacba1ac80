package fs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/testutil"
	"github.com/volfs/volfs/volmap/blockdev"
)

// TestDeviceGuardStress closes and reopens an image's device over and over
// while other goroutines read, write, zero, punch, flush and stat it, and
// a second device is opened in between, so that it takes the descriptor
// numbers just freed. Every raw-fd use holds the device's reference
// (acquireDevice): no syscall may reach the second device, whose bytes must
// stay as they were. Run it with -race as well (make racetest).
func TestDeviceGuardStress(t *testing.T) {
	testutil.RequireRoot(t)
	const size = 4 << 20
	dev, victim := testutil.NewLoop(t, size), testutil.NewLoop(t, size)
	pattern := bytes.Repeat([]byte{0xab}, size)
	if err := os.WriteFile(victim, pattern, 0); err != nil {
		t.Fatal(err)
	}
	drv, err := blockdev.New(blockdev.Config{Globs: []string{dev}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r := NewRoot(Options{Driver: drv})
	v, err := drv.Lookup(ctx, filepath.Base(dev))
	if err != nil {
		t.Fatal(err)
	}
	n := newImage(r, v)
	fh, _, errno := n.Open(ctx, syscall.O_RDWR)
	if errno != 0 {
		t.Fatal(errno)
	}
	h := fh.(*handle)

	var stop atomic.Bool
	var wg sync.WaitGroup
	work := func(f func(i int64)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(0); !stop.Load(); i++ {
				f(i)
			}
		}()
	}
	// Errors are expected while the device is closed (EIO); only what
	// reaches the other device matters.
	work(func(i int64) {
		_ = h.Allocate(ctx, uint64(i*4096%(size-65536)), 65536, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE)
	})
	work(func(i int64) {
		_ = h.Allocate(ctx, uint64(i*512%(size-65536)+100), 65536, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE)
	})
	work(func(i int64) {
		buf := make([]byte, 8192)
		_, _ = h.Read(ctx, buf, i*4096%(size-8192))
		_, _ = h.Write(ctx, buf[:4096], i*4096%(size-8192))
		_, _ = h.Write(ctx, buf[:100], i*4096%(size-8192)+7)
	})
	work(func(i int64) {
		_ = h.Fsync(ctx, fsyncDataOnly)
		_ = h.Flush(ctx)
		n.sizeChecked.Store(0)
		var out fuse.AttrOut
		_ = n.Getattr(ctx, nil, &out)
	})
	for range 300 {
		n.closeDevices()
		var fds []*os.File
		for range 4 {
			f, err := os.OpenFile(victim, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, f)
		}
		for _, f := range fds {
			f.Close()
		}
		n.mu.Lock()
		errno := n.openDeviceLocked(ctx)
		n.mu.Unlock()
		if errno != 0 {
			t.Fatal(errno)
		}
	}
	stop.Store(true)
	wg.Wait()
	if errno := h.Release(ctx); errno != 0 {
		t.Errorf("release: %v", errno)
	}
	got, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pattern) {
		t.Fatal("an operation on a closed image reached another device through a reused descriptor")
	}
}
