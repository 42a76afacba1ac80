package multihost

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestKilledServerReleases is a server killed (SIGKILL) with a file open:
// its LV stays active on that host, so locked, and the other host gets
// EBUSY; the next mount on the same host deactivates the LV (nothing holds
// it open any more), which releases the lock, and the other host opens it.
func TestKilledServerReleases(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	ensureVG(t)
	onHosts(t, killedHost1, killedHost2)
}

const keptFile = "kept"

func killedHost1(t *testing.T) {
	m := mountVG(t)
	if err := os.WriteFile(m.path(keptFile), pattern(mib, 4), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.path(keptFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	pid := serverPid(t, m.dir)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed server gone", quick, func() bool {
		_, err := os.Stat("/proc/" + strconv.Itoa(pid))
		return errors.Is(err, os.ErrNotExist)
	})
	_ = f.Close() // the connection is gone: ENOTCONN
	if !active(t, keptFile) {
		t.Fatalf("%s's LV is not active after its server was killed with the file open: nothing to release", keptFile)
	}
	signal(t, "kill-killed")

	wait(t, "h2-kill-refused", longWait)
	timed(t, volfsBin, "umount", "--force", m.dir)
	m2 := mountVG(t)
	if active(t, keptFile) {
		t.Errorf("%s's LV is still active after the next mount on this host", keptFile)
	}
	m2.logHas(t, "earlier server of this mount left active", "lv="+keptFile)
	signal(t, "kill-released")
	wait(t, "h2-kill-opened", longWait)
	m2.umount(t)
}

func killedHost2(t *testing.T) {
	m := mountVG(t)
	wait(t, "kill-killed", longWait)
	waitFor(t, "kept listed", quick, func() bool {
		_, err := os.Stat(m.path(keptFile))
		return err == nil
	})
	if f, err := os.OpenFile(m.path(keptFile), os.O_RDWR, 0); err == nil {
		f.Close()
		t.Errorf("opened a file whose LV host 1's killed server left active")
	} else if !errors.Is(err, syscall.EBUSY) {
		t.Errorf("open of a file whose LV host 1's killed server left active: %v, want EBUSY", err)
	}
	signal(t, "h2-kill-refused")

	wait(t, "kill-released", longWait)
	var f *os.File
	waitFor(t, "kept opens on host 2 once host 1 mounted again", quick, func() bool {
		var err error
		f, err = os.OpenFile(m.path(keptFile), os.O_RDWR, 0)
		return err == nil
	})
	got := make([]byte, mib)
	if _, err := f.ReadAt(got, 0); err != nil || string(got) != string(pattern(mib, 4)) {
		t.Errorf("reading kept on host 2: %v (or other bytes than host 1 wrote)", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	waitFor(t, "kept's LV inactive here after the last close", quick, func() bool { return !active(t, keptFile) })
	if err := os.Remove(m.path(keptFile)); err != nil {
		t.Errorf("rm kept on host 2: %v", err)
	}
	m.umount(t)
	signal(t, "h2-kill-opened")
}

// serverPid is the pid the server of the mount at dir recorded (cmd/volfs
// pidPath: /run/volfs/HASH.pid, "PID START").
func serverPid(t *testing.T, dir string) int {
	t.Helper()
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	h := sha256.Sum256([]byte(dir))
	b, err := os.ReadFile(filepath.Join("/run/volfs", hex.EncodeToString(h[:8])+".pid"))
	if err != nil {
		t.Fatalf("pid file of the server of %s: %v", dir, err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(b) + " x")[0])
	if err != nil || pid <= 0 {
		t.Fatalf("pid file of the server of %s: %q", dir, b)
	}
	return pid
}
