// Package testutil has the fixtures volfs tests share: root and tool checks
// that skip with a reason, and loop devices over sparse files in /dev/shm
// that are detached and removed when the test ends, even when it fails.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// ScratchPrefix starts the name of every backing file a test creates, so a
// leak check can find them.
const ScratchPrefix = "volfs-test-"

// RequireRoot skips a test that needs root, /dev/fuse and loop devices.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, FUSE mounts)")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s", p)
		}
	}
	Need(t, "losetup")
}

// Need skips the test when a tool is not installed. CI installs them all.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (not installed)", tool)
		}
	}
}

// NewLoop attaches a loop device over a new sparse file of size bytes on
// /dev/shm and returns its path.
func NewLoop(t testing.TB, size int64) string {
	t.Helper()
	f, err := os.CreateTemp("/dev/shm", ScratchPrefix+"*.img")
	if err != nil {
		t.Fatal(err)
	}
	backing := f.Name()
	created.Store(backing, true)
	t.Cleanup(func() { os.Remove(backing) })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %s: %v: %s", backing, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// created holds the backing files this process made, so that a leak check
// does not blame it for loop devices of another test run on the machine.
var created sync.Map

// LeakedLoops lists loop devices whose backing file a test of this process
// created.
func LeakedLoops() []string {
	var leaked []string
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if _, ours := created.Load(backing); err == nil && ours {
			leaked = append(leaked, "/dev/"+strings.Split(f, "/")[3]+" ("+strings.TrimSpace(string(b))+")")
		}
	}
	return leaked
}

// OpenFds counts this process's open file descriptors.
func OpenFds() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// MountsUnder lists the mount points below prefix (mounts a test left).
func MountsUnder(prefix string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], prefix) {
			out = append(out, f[4])
		}
	}
	return out
}

// ScratchDir makes a directory in /dev/shm (tmpfs: sparse files there cost
// no disk) that is removed when the test ends.
func ScratchDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", ScratchPrefix+"*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// SameFile reports whether paths a and b (links followed) are the same
// file: a holder's /proc/PID/fd/N is the file it opened, not what the child
// had at N before it ran exec (Go's fork keeps the parent's descriptors
// until then).
func SameFile(a, b string) bool {
	ia, err := os.Stat(a)
	if err != nil {
		return false
	}
	ib, err := os.Stat(b)
	return err == nil && os.SameFile(ia, ib)
}
