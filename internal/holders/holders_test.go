package holders

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/volfs/volfs/internal/testutil"
)

func TestFind(t *testing.T) {
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, 8<<20)
	if who, err := Find(dev, true); err != nil || len(who) != 0 {
		t.Fatalf("an unused device: %q, %v", who, err)
	}

	// Another process holds it.
	sleep := exec.Command("sh", "-c", "exec sleep 60 3<"+dev)
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	want := "held by pid " + strconv.Itoa(sleep.Process.Pid) + " (sleep)"
	// Polls until the shell has become sleep (its comm changes at exec).
	deadline := time.Now().Add(10 * time.Second)
	for {
		who, err := Find(dev, false)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(who, "; ") == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %q, want %q", who, want)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// This process holds it: counted only with self.
	sleep.Process.Kill()
	sleep.Wait()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if who, _ := Find(dev, false); len(who) != 0 {
		t.Errorf("without self: %q", who)
	}
	if who, _ := Find(dev, true); len(who) != 1 || !strings.Contains(who[0], "(this process)") {
		t.Errorf("with self: %q", who)
	}
}

// hangFile is a file whose getattr never answers once hang is set, as a
// FUSE server a user mounted and stopped.
type hangFile struct {
	gofs.Inode
	hang    *atomic.Bool
	release chan struct{}
}

func (f *hangFile) Getattr(ctx context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if f.hang.Load() {
		<-f.release
	}
	out.Mode = syscall.S_IFREG | 0o644
	return 0
}

func (f *hangFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

// A process holding a file of a FUSE mount below /dev (a user's, in
// /dev/shm) whose server stopped answering: Find answers without a stat
// there. It stat'ed every path under /dev a process held, and hung (under
// the lvm driver's lock) until that server answered.
func TestFindSkipsMountsBelowDev(t *testing.T) {
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, 8<<20)
	dir, err := os.MkdirTemp("/dev/shm", testutil.ScratchPrefix+"fuse-")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	defer os.Remove(dir)
	f := &hangFile{hang: new(atomic.Bool), release: make(chan struct{})}
	var released sync.Once
	release := func() { released.Do(func() { close(f.release) }) }
	defer release()
	root := &gofs.Inode{}
	zero := time.Duration(0)
	srv, err := gofs.Mount(dir, root, &gofs.Options{
		EntryTimeout: &zero, AttrTimeout: &zero,
		OnAdd: func(ctx context.Context) {
			root.AddChild("f", root.NewPersistentInode(ctx, f, gofs.StableAttr{Mode: syscall.S_IFREG}), false)
		},
	})
	if err != nil {
		t.Skip("cannot mount FUSE here:", err)
	}
	defer func() {
		release()
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	}()
	hold := exec.Command("sh", "-c", "exec sleep 60 3<"+dir+"/f")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { hold.Process.Kill(); hold.Wait() }()
	// The holder has the file open once the shell has become sleep.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if comm, _ := os.ReadFile("/proc/" + strconv.Itoa(hold.Process.Pid) + "/comm"); string(comm) == "sleep\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Error("the holder did not start")
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.hang.Store(true)
	done := make(chan error, 1)
	go func() { _, err := Find(dev, false); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(ProcTimeout + 10*time.Second):
		t.Error("Find hung on a stat of a file of a FUSE mount below /dev")
		release()
		<-done
	}
}
