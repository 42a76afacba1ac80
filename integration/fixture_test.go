package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/testutil"
)

// mount is one running volfs mount over loop devices.
type mount struct {
	t     testing.TB
	dir   string // mount point
	state string // --state-dir
	log   string // --log-file
	args  []string
}

// newMount mounts the given devices with extra flags; the mount is
// unmounted when the test ends.
func newMount(t testing.TB, devs []string, extra ...string) *mount {
	t.Helper()
	base, err := os.MkdirTemp(tmpRoot, "m-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &mount{t: t, dir: filepath.Join(base, "mnt"), state: filepath.Join(base, "state"), log: filepath.Join(base, "volfs.log")}
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		m.args = append(m.args, "--device", d)
	}
	m.args = append(m.args, "--state-dir", m.state, "--log-file", m.log)
	m.args = append(m.args, extra...)
	m.start()
	t.Cleanup(func() {
		if ok, _ := isMounted(m.dir); ok {
			if out, err := exec.Command(volfsBin, "umount", m.dir).CombinedOutput(); err != nil {
				t.Errorf("volfs umount %s: %v: %s", m.dir, err, out)
				_ = exec.Command("umount", "-l", m.dir).Run()
			}
		}
		if t.Failed() {
			if b, err := os.ReadFile(m.log); err == nil {
				t.Logf("server log:\n%s", b)
			}
		}
	})
	return m
}

func (m *mount) start() {
	m.t.Helper()
	args := append([]string{"mount"}, m.args...)
	args = append(args, m.dir)
	if out, err := exec.Command(volfsBin, args...).CombinedOutput(); err != nil {
		m.t.Fatalf("volfs %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (m *mount) umount() {
	m.t.Helper()
	if out, err := exec.Command(volfsBin, "umount", m.dir).CombinedOutput(); err != nil {
		m.t.Fatalf("volfs umount: %v: %s", err, out)
	}
}

func (m *mount) remount() {
	m.t.Helper()
	m.umount()
	m.start()
}

// path is the file of a device in the mount.
func (m *mount) path(dev string) string { return filepath.Join(m.dir, filepath.Base(dev)) }

func isMounted(dir string) (bool, string) {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true, line
		}
	}
	return false, ""
}

// sh runs a command and fails the test with its output when it fails.
func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func sha(t testing.TB, path string, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, n)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func randomFile(t testing.TB, size int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "random")
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7 + i/4093)
	}
	copy(b, []byte("volfs test data"))
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func fileBytes(t testing.TB, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

func setup(t *testing.T, size int64, extra ...string) (*mount, string) {
	t.Helper()
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, size)
	return newMount(t, []string{dev}, extra...), dev
}
