package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
)

// volfsRun runs the binary and returns its combined output and exit code.
func volfsRun(t testing.TB, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(volfsBin, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatal(err)
	return "", -1
}

func TestCLIErrors(t *testing.T) {
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, 8<<20)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	m := newMount(t, []string{dev})
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"mount", filepath.Join(dir, "missing"), "--device", dev}, 1, "does not exist"},
		{[]string{"mount", file, "--device", dev}, 1, "is not a directory"},
		{[]string{"mount", m.dir, "--device", dev}, 1, "already a mount point"},
		{[]string{"mount", dir, "--device", filepath.Join(dir, "nothing*")}, 1, "no block device matches"},
		{[]string{"mount", dir, "--device", file}, 1, "no block device matches"},
		{[]string{"mount", dir}, 2, "--vg VG or --device GLOB"},
		{[]string{"mount", dir, "--vg", "vg0", "--device", dev}, 2, "exclude each other"},
		{[]string{"mount", "--device", dev}, 2, "exactly one MOUNTPOINT"},
		{[]string{"mount", dir, "--bogus"}, 2, "unknown flag"},
		{[]string{"umount", dir}, 1, "is not mounted"},
	} {
		out, code := volfsRun(t, c.args...)
		if code != c.code || !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("volfs %s: exit %d, %q; want exit %d and one line with %q",
				strings.Join(c.args, " "), code, out, c.code, c.want)
		}
	}
	if ok, _ := isMounted(dir); ok {
		t.Fatal("a failed mount left a mount behind")
	}
	// Not root.
	testutil.Need(t, "setpriv")
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		volfsBin, "mount", "--device", dev, dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "must run as root") {
		t.Errorf("mount as nobody: %v %q", err, out)
	}
}

func TestBusyUmountNamesTheHolder(t *testing.T) {
	m, dev := setup(t, 8<<20)
	hold := exec.Command("sleep", "60")
	f, err := os.Open(m.path(dev))
	if err != nil {
		t.Fatal(err)
	}
	hold.ExtraFiles = []*os.File{f}
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer func() { _ = hold.Process.Kill(); _ = hold.Wait() }()
	out, code := volfsRun(t, "umount", m.dir)
	if code != 1 || !strings.Contains(out, "busy") || !strings.Contains(out, "sleep (pid") {
		t.Fatalf("busy umount: exit %d %q; want the holder named", code, out)
	}
	if ok, _ := isMounted(m.dir); !ok {
		t.Fatal("a busy umount unmounted anyway")
	}
}

func TestVersionAndHelp(t *testing.T) {
	if out, code := volfsRun(t, "version"); code != 0 || !strings.HasPrefix(out, "volfs ") {
		t.Errorf("version: %d %q", code, out)
	}
	for _, cmd := range []string{"mount", "umount", "version"} {
		if out, code := volfsRun(t, cmd, "--help"); code != 0 || !strings.Contains(out, "Examples:") {
			t.Errorf("%s --help: exit %d, no examples:\n%s", cmd, code, out)
		}
	}
}

// In the foreground (systemd), SIGTERM unmounts and the server exits 0.
func TestForegroundSIGTERM(t *testing.T) {
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, 8<<20)
	base, err := os.MkdirTemp(tmpRoot, "fg-")
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(volfsBin, "mount", "--foreground", "--device", dev, "--state-dir", filepath.Join(base, "state"), mnt)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ok, _ := isMounted(mnt); ok {
			_ = exec.Command("umount", "-l", mnt).Run()
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ok, _ := isMounted(mnt); ok {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("no mount after 10 s:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("server after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("server still running 20 s after SIGTERM:\n%s", out.String())
	}
	if ok, _ := isMounted(mnt); ok {
		t.Fatal("still mounted after SIGTERM")
	}
	if !strings.Contains(out.String(), "unmounted") {
		t.Errorf("server log does not say it unmounted:\n%s", out.String())
	}
}

// The server closes a volume's device when the last handle closes.
func TestServerClosesDevices(t *testing.T) {
	m, dev := setup(t, 8<<20)
	pidb, err := os.ReadFile(filepath.Join("/run/volfs", pidName(t, m.dir)))
	if err != nil {
		t.Fatal(err)
	}
	fdDir := "/proc/" + strings.Fields(string(pidb))[0] + "/fd"
	count := func() int {
		ents, err := os.ReadDir(fdDir)
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	base := count()
	for range 20 {
		f, err := os.OpenFile(m.path(dev), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("x"), 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for count() > base {
		if time.Now().After(deadline) {
			t.Fatalf("server holds %d fds after every file was closed, %d before", count(), base)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pidName finds the pid file of the mount at dir.
func pidName(t testing.TB, dir string) string {
	files, _ := filepath.Glob("/run/volfs/*.pid")
	for _, f := range files {
		b, _ := os.ReadFile(f)
		fields := strings.Fields(string(b)) // "PID START"
		if len(fields) == 0 {
			continue
		}
		pid := fields[0]
		cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		if strings.Contains(string(cmdline), dir) {
			return filepath.Base(f)
		}
	}
	t.Fatalf("no pid file for %s", dir)
	return ""
}
