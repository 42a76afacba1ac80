package integration

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
)

// serverPid is the pid of the server of m, from its pid file ("PID START").
func serverPid(t testing.TB, m *mount) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/run/volfs", pidName(t, m.dir)))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(b))[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// running reports whether pid runs (a zombie does not).
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func waitGone(t testing.TB, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for running(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("server %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// plainDir checks that dir is no mount any more and usable as a directory.
func plainDir(t testing.TB, dir string) {
	t.Helper()
	if ok, line := isMounted(dir); ok {
		t.Fatalf("%s is still mounted: %s", dir, line)
	}
	if _, err := os.ReadDir(dir); err != nil {
		t.Fatalf("%s is not a usable directory: %v", dir, err)
	}
}

// A stopped (wedged) server: umount returns an error within its timeout
// instead of hanging, and --force detaches the mount and ends the server.
func TestUmountWedgedServer(t *testing.T) {
	m, dev := setup(t, 8<<20)
	pid := serverPid(t, m)
	// A client holds a file, in a process of its own: while the server
	// is stopped, a process of this test with a file of the mount open
	// could not even start a command (exec closes the fd, which waits for
	// the server's answer to FLUSH).
	holder := exec.Command("sh", "-c", "exec 3<"+m.path(dev)+"; read x; head -c 1 <&3")
	var holderOut strings.Builder
	holder.Stdout, holder.Stderr = &holderOut, &holderOut
	holderIn, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holderIn.Close(); _ = holder.Process.Kill(); _ = holder.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(holdersOf(holder.Process.Pid), m.dir) {
		if time.Now().After(deadline) {
			t.Fatal("the holder did not open the file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		if ok, _ := isMounted(m.dir); ok {
			_, _ = volfsRun(t, "umount", "--force", "--timeout", "5s", m.dir)
		}
		if running(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	out, code := volfsRun(t, "umount", "--timeout", "2s", m.dir)
	if code != 1 || !strings.Contains(out, "--force") {
		t.Fatalf("umount of a stopped server: exit %d %q; want an error that suggests --force", code, out)
	}
	out, code = volfsRun(t, "umount", "--force", "--timeout", "5s", m.dir)
	if code != 0 || strings.Contains(out, "could not abort") || !strings.Contains(out, "was in use by sh (pid") {
		t.Fatalf("umount --force: exit %d %q; want the connection aborted and the holder named", code, out)
	}
	plainDir(t, m.dir)
	waitGone(t, pid)
	// The holder's file now fails instead of waiting for a server.
	if _, err := io.WriteString(holderIn, "x\n"); err != nil {
		t.Fatal(err)
	}
	holderIn.Close()
	timer := time.AfterFunc(20*time.Second, func() { _ = holder.Process.Kill() }) // never hang the suite
	defer timer.Stop()
	if err := holder.Wait(); err == nil || !strings.Contains(holderOut.String(), "not connected") {
		t.Errorf("a read of the aborted mount's file: %v %q, want ENOTCONN", err, holderOut.String())
	}
	if _, err := os.Stat(filepath.Join("/run/volfs", pidHash(m.dir))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the pid file of the killed server is left: %v", err)
	}
}

// holdersOf lists the targets of a process's fds.
func holdersOf(pid int) string {
	links, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/fd/*")
	var out []string
	for _, l := range links {
		if t, err := os.Readlink(l); err == nil {
			out = append(out, t)
		}
	}
	return strings.Join(out, " ")
}

// pidHash is the pid file name of a mount point (what volfs computes).
func pidHash(dir string) string {
	out, _ := exec.Command("sh", "-c", `printf %s "$1" | sha256sum | cut -c1-16`, "sh", dir).Output()
	return strings.TrimSpace(string(out)) + ".pid"
}

// A server killed with SIGKILL leaves its mount at ENOTCONN and its pid
// file behind: mount says what to do, umount (and umount --force) clean
// up, and a pid file whose pid now names another process is not taken for
// a live server.
func TestUmountDeadServer(t *testing.T) {
	for _, force := range []bool{false, true} {
		t.Run(map[bool]string{false: "umount", true: "force"}[force], func(t *testing.T) {
			m, _ := setup(t, 8<<20)
			pid := serverPid(t, m)
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitGone(t, pid)
			// The kernel answers from its attribute cache for up to a
			// second, then ENOTCONN.
			deadline := time.Now().Add(10 * time.Second)
			for _, err := os.Stat(m.dir); !errors.Is(err, syscall.ENOTCONN); _, err = os.Stat(m.dir) {
				if time.Now().After(deadline) {
					t.Fatalf("stat of a dead mount: %v, want ENOTCONN", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			out, code := volfsRun(t, "mount", "--device", "/dev/null", m.dir)
			if code != 1 || !strings.Contains(out, "volfs umount "+m.dir) {
				t.Errorf("mount over a dead mount: exit %d %q; want a hint to volfs umount", code, out)
			}
			// The dead server's pid now belongs to someone else.
			other := exec.Command("sleep", "60")
			if err := other.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
			pidFile := filepath.Join("/run/volfs", pidHash(m.dir))
			if err := os.WriteFile(pidFile, []byte(strconv.Itoa(other.Process.Pid)+" 1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			args := []string{"umount", "--timeout", "5s", m.dir}
			if force {
				args = append(args, "--force")
			}
			if out, code := volfsRun(t, args...); code != 0 {
				t.Fatalf("volfs %s: exit %d %q", strings.Join(args, " "), code, out)
			}
			plainDir(t, m.dir)
			if !running(other.Process.Pid) {
				t.Error("umount killed an unrelated process that reused the server's pid")
			}
			if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the stale pid file is left: %v", err)
			}
			m.start() // the mount point is usable again
		})
	}
}

// Leftovers of a server killed while saving attributes are removed at the
// next mount.
func TestStateLeftoversRemoved(t *testing.T) {
	m, _ := setup(t, 8<<20)
	m.umount()
	tmp := filepath.Join(m.state, "blockdev", ".tmp-12345")
	if err := os.WriteFile(tmp, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.start()
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s survived a mount: %v", tmp, err)
	}
}

// A state directory others may write is refused, naming it.
func TestUnsafeStateDir(t *testing.T) {
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, 8<<20)
	base, err := os.MkdirTemp(tmpRoot, "sd-")
	if err != nil {
		t.Fatal(err)
	}
	state, mnt := filepath.Join(base, "state"), filepath.Join(base, "mnt")
	for _, d := range []string{state, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(state, 0o777); err != nil {
		t.Fatal(err)
	}
	out, code := volfsRun(t, "mount", "--device", dev, "--state-dir", state, "--log-file", filepath.Join(base, "log"), mnt)
	if code != 1 || !strings.Contains(out, state+" is writable by group or others") || !strings.Contains(out, "chmod go-w") {
		t.Errorf("mount with a 0777 state dir: exit %d %q", code, out)
	}
	if ok, _ := isMounted(mnt); ok {
		_, _ = volfsRun(t, "umount", mnt)
		t.Fatal("mounted with a world-writable state dir")
	}
}

// Mounting over a non-empty directory hides its files: say so.
func TestMountOverNonEmptyDirWarns(t *testing.T) {
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, 8<<20)
	base, err := os.MkdirTemp(tmpRoot, "ne-")
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(base, "mnt")
	if err := os.MkdirAll(filepath.Join(mnt, "hidden"), 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(base, "log")
	out, code := volfsRun(t, "mount", "--device", dev, "--state-dir", filepath.Join(base, "state"), "--log-file", log, mnt)
	if code != 0 {
		t.Fatalf("mount: exit %d %q", code, out)
	}
	defer func() {
		if out, code := volfsRun(t, "umount", mnt); code != 0 {
			t.Errorf("umount: %q", out)
		}
	}()
	if !strings.Contains(out, mnt+" is not empty (hidden, ...): its files are hidden while mounted") {
		t.Errorf("mount over a non-empty directory said %q", out)
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "mount point is not empty") {
		t.Errorf("the log does not say the mount point was not empty:\n%s", b)
	}
}
