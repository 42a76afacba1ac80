package multihost

import (
	"bytes"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"
)

// failoverEnv turns TestFailover on: host 1's guest powers itself off, so
// the test runs in a pair of guests of its own (scripts/multihost-test.sh
// runs it after the other tests, unless MULTIHOST_FAILOVER=0).
const failoverEnv = "VOLFS_FAILOVER"

// failoverLimit bounds how long host 2 waits for the dead host's lease:
// sanlock frees it after 8 × io_timeout (10 s) plus the 60 s the watchdog
// is given to fire, about 140 s; TCG on a busy machine adds to that.
const failoverLimit = 10 * time.Minute

// TestFailover is a host that dies holding a file: host 1 opens "fo",
// writes and syncs it, then powers its guest off (sysrq o: no unmount, no
// lock release). Host 2 is refused (EBUSY) until sanlock considers host 1
// dead, then opens the file and reads what host 1 wrote. The TIMING line
// is the failover time.
func TestFailover(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if os.Getenv(failoverEnv) != "1" {
		t.Skipf("%s=1 not set: host 1 powers its guest off (scripts/multihost-test.sh runs it in guests of its own)", failoverEnv)
	}
	ensureVG(t)
	onHosts(t, failoverHost1, failoverHost2)
}

const foFile = "fo"

func failoverHost1(t *testing.T) {
	m := mountVG(t)
	if err := os.WriteFile(m.path(foFile), pattern(mib, 5), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.path(foFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(pattern(mib, 6), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	signal(t, "fo-held")
	wait(t, "h2-fo-refused", longWait)
	// The dying marker must reach the host before the guest is gone.
	signal(t, "fo-dying")
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/kernel/sysrq", []byte("1\n"), 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("powering off with %s open", foFile)
	if err := os.WriteFile("/proc/sysrq-trigger", []byte("o"), 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Hour) // the guest is gone before this returns
}

func failoverHost2(t *testing.T) {
	m := mountVG(t)
	wait(t, "fo-held", longWait)
	if f, err := os.OpenFile(m.path(foFile), os.O_RDWR, 0); err == nil {
		f.Close()
		t.Fatalf("opened %s while host 1 has it open", foFile)
	} else if !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("open of a file open on host 1: %v, want EBUSY", err)
	}
	signal(t, "h2-fo-refused")
	wait(t, "fo-dying", longWait)
	start := time.Now()
	var f *os.File
	attempts := 0
	for {
		var err error
		attempts++
		if f, err = os.OpenFile(m.path(foFile), os.O_RDWR, 0); err == nil {
			break
		}
		if !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("open after host 1 died: %v, want EBUSY until its lease expires", err)
		}
		if time.Since(start) > failoverLimit {
			t.Fatalf("%s still EBUSY %v after host 1 died", foFile, failoverLimit)
		}
		time.Sleep(5 * time.Second)
	}
	t.Logf("TIMING failover: %s opened on host 2 %v after host 1 powered off (%d attempts, 5 s apart)",
		foFile, time.Since(start).Round(time.Second), attempts)
	got := make([]byte, mib)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Errorf("read: %v", err)
	} else if !bytes.Equal(got, pattern(mib, 6)) {
		t.Errorf("host 2 reads other bytes than host 1 wrote and synced before it died")
	}
	if err := f.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	waitFor(t, "fo's LV inactive here after the last close", quick, func() bool { return !active(t, foFile) })
	m.umount(t)
}
