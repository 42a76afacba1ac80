package lvm_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/volfs/volfs/internal/testutil"
	"github.com/volfs/volfs/volmap/lvm"
)

// losetup attaches file to a new loop device, detached when the test ends.
func losetup(t *testing.T, file string) string {
	t.Helper()
	out, err := exec.Command("losetup", "--find", "--show", file).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// The devices lvm may scan leave out a loop device over a file of a FUSE
// mount, and keep one over a plain file.
func TestScanDevices(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := t.TempDir()
	srv, err := gofs.Mount(mnt, &countedDisk{}, &gofs.Options{MountOptions: fuse.MountOptions{DirectMount: true, FsName: "counted"}})
	if err != nil {
		t.Skipf("FUSE mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	plain := filepath.Join(testutil.ScratchDir(t), "plain.img")
	if err := os.WriteFile(plain, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	overFUSE, overPlain := losetup(t, filepath.Join(mnt, "disk")), losetup(t, plain)
	devs, skipped := lvm.ScanDevices()
	if slices.Contains(devs, overFUSE) || !slices.Contains(skipped, overFUSE) {
		t.Errorf("%s (over a FUSE file) is scanned: devices %v, skipped %v", overFUSE, devs, skipped)
	}
	if !slices.Contains(devs, overPlain) || slices.Contains(skipped, overPlain) {
		t.Errorf("%s (over a plain file) is not scanned: devices %v, skipped %v", overPlain, devs, skipped)
	}
}

// countedDisk is a FUSE file system of one 64 MiB file of zeros, "disk",
// that counts the reads that reach it.
type countedDisk struct {
	gofs.Inode
	reads atomic.Int64
}

type countedFile struct {
	gofs.Inode
	d *countedDisk
}

var (
	_ gofs.NodeOnAdder   = (*countedDisk)(nil)
	_ gofs.NodeGetattrer = (*countedFile)(nil)
	_ gofs.NodeOpener    = (*countedFile)(nil)
	_ gofs.NodeReader    = (*countedFile)(nil)
)

func (c *countedDisk) OnAdd(ctx context.Context) {
	c.AddChild("disk", c.NewPersistentInode(ctx, &countedFile{d: c}, gofs.StableAttr{Mode: syscall.S_IFREG}), false)
}

func (f *countedFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode, out.Size = syscall.S_IFREG|0o600, 64<<20
	return 0
}

func (f *countedFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *countedFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.d.reads.Add(1)
	clear(dest)
	return fuse.ReadResultData(dest), 0
}
