package integration

import (
	"bufio"
	"fmt"
	"net"
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

// logrotate renames the log file and sends SIGHUP: the server keeps
// serving and writes on at the old path, in a new file.
func TestSIGHUPReopensLog(t *testing.T) {
	m, dev := setup(t, 8<<20)
	b, err := os.ReadFile(filepath.Join("/run/volfs", pidName(t, m.dir)))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.Fields(string(b) + " 0")[0]) // "PID START"
	if pid <= 1 {
		t.Fatalf("pid file %q names no server", b)
	}
	rotated := m.log + ".1"
	if err := os.Rename(m.log, rotated); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // twice: the second reopen closes the first one's file
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, func() bool {
			b, _ := os.ReadFile(m.log)
			return strings.Count(string(b), "reopened the log file") == i+1
		}, "the server did not log to a new file at "+m.log)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		t.Fatal("SIGHUP killed the server")
	}
	// Go's own output (stderr) follows the new file too.
	if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/2", pid)); l != m.log {
		t.Errorf("server's stderr is %s, want %s", l, m.log)
	}
	if err := os.WriteFile(m.path(dev), []byte("after SIGHUP"), 0); err != nil {
		t.Fatalf("mount after SIGHUP: %v", err)
	}
	if got, err := os.ReadFile(m.path(dev)); err != nil || !strings.HasPrefix(string(got), "after SIGHUP") {
		t.Fatalf("mount after SIGHUP: %v", err)
	}
	old, _ := os.ReadFile(rotated)
	if !strings.Contains(string(old), "serving") {
		t.Errorf("the rotated file lost the lines before SIGHUP:\n%s", old)
	}
	m.umount()
	if b, _ := os.ReadFile(m.log); !strings.Contains(string(b), "unmounted") {
		t.Errorf("the new log file does not say the server unmounted:\n%s", b)
	}
}

// Run by systemd (Type=notify): READY=1 and STATUS= once serving,
// STOPPING=1 when unmounted; log lines to the journal carry their syslog
// priority and no time stamp.
func TestSystemdNotifyAndJournal(t *testing.T) {
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, 8<<20)
	base, err := os.MkdirTemp(tmpRoot, "sd-")
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	sockPath := filepath.Join(base, "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	// The journal: a pipe, whose device and inode JOURNAL_STREAM names.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(pw.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(volfsBin, "mount", "--foreground", "--device", dev, "--state-dir", filepath.Join(base, "state"), mnt)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sockPath, fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if ok, _ := isMounted(mnt); ok {
			_ = exec.Command("umount", "-l", mnt).Run()
		}
	})
	lines := make(chan string, 100)
	go func() {
		s := bufio.NewScanner(pr)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case m := <-msgs:
			if !strings.Contains(m, want) {
				t.Fatalf("notify message %q, want %q", m, want)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("no notify message %q", want)
		}
	}
	expect("READY=1\nSTATUS=serving " + dev + " at " + mnt)
	// Busy: SIGTERM leaves the mount serving, and the status says so.
	f, err := os.Open(filepath.Join(mnt, filepath.Base(dev)))
	if err != nil {
		t.Fatal(err)
	}
	hold := exec.Command("sleep", "60")
	hold.ExtraFiles = []*os.File{f}
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer func() { _ = hold.Process.Kill(); _ = hold.Wait() }()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expect("STATUS=unmounting on terminated")
	expect("STATUS=serving " + mnt + "; unmount refused, busy: ")
	_ = hold.Process.Kill()
	_ = hold.Wait()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expect("STATUS=unmounting on terminated")
	expect("STOPPING=1")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("server: %v", err)
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("server still running 20 s after SIGTERM")
	}
	var all []string
	for l := range lines {
		all = append(all, l)
	}
	if len(all) == 0 {
		t.Fatal("no log lines on stderr")
	}
	for _, l := range all {
		if !strings.HasPrefix(l, "<") || strings.Contains(l, "time=") {
			t.Errorf("journal line without priority, or with a time: %q", l)
		}
	}
	if !strings.Contains(strings.Join(all, "\n"), "<6>level=INFO msg=serving") {
		t.Errorf("no serving line at priority 6:\n%s", strings.Join(all, "\n"))
	}
}

func TestVersionFlagAndUnknownCommand(t *testing.T) {
	v, code := volfsRun(t, "version")
	if f, code2 := volfsRun(t, "--version"); code != 0 || code2 != 0 || f != v || !strings.HasPrefix(f, "volfs ") {
		t.Errorf("volfs --version: exit %d %q; volfs version: %q", code2, f, v)
	}
	out, code := volfsRun(t, "umont", "/mnt")
	if code != 2 || out != "volfs: unknown command \"umont\" (did you mean mount or umount?); see volfs --help\n" {
		t.Errorf("volfs umont: exit %d %q", code, out)
	}
	if out, code := volfsRun(t, "mount", "--log-level", "loud", "--vg", "vg0", "/mnt"); code != 2 || !strings.Contains(out, "--log-level") {
		t.Errorf("bad --log-level: exit %d %q", code, out)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Started by systemd (mount(8) of an fstab line in a mount unit sets
// INVOCATION_ID) without --log-file, the background server logs to its
// stderr, the journal, not to /var/log/volfs.log.
func TestBackgroundServerLogsToStderrUnderSystemd(t *testing.T) {
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, 8<<20)
	base, err := os.MkdirTemp(tmpRoot, "inv-")
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	journal, err := os.Create(filepath.Join(base, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer journal.Close()
	cmd := exec.Command(volfsBin, "mount", "--device", dev, "--state-dir", filepath.Join(base, "state"), mnt)
	cmd.Env = append(os.Environ(), "INVOCATION_ID=0123456789abcdef0123456789abcdef")
	cmd.Stdout, cmd.Stderr = journal, journal
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(journal.Name())
		t.Fatalf("volfs mount: %v\n%s", err, b)
	}
	t.Cleanup(func() {
		if ok, _ := isMounted(mnt); ok {
			_ = exec.Command("umount", "-l", mnt).Run()
		}
	})
	if out, code := volfsRun(t, "umount", mnt); code != 0 {
		t.Fatalf("volfs umount: %d %s", code, out)
	}
	b, _ := os.ReadFile(journal.Name())
	if !strings.Contains(string(b), "msg=serving") || !strings.Contains(string(b), "msg=unmounted") {
		t.Errorf("the server did not log to its stderr:\n%s", b)
	}
}

// The shipped logrotate rule, pointed at this test's log file and server
// (the rule signals every server in /run/volfs, other runs' too):
// logrotate renames the file, the server reopens its path.
func TestLogrotateRule(t *testing.T) {
	testutil.Need(t, "logrotate")
	m, dev := setup(t, 8<<20)
	pidFile := filepath.Join("/run/volfs", pidName(t, m.dir))
	rule, err := os.ReadFile("../contrib/logrotate/volfs")
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.Replace(string(rule), "\n/var/log/volfs.log {", "\n"+m.log+" {", 1)
	conf = strings.Replace(conf, "/run/volfs/*.pid", pidFile, 1)
	if !strings.Contains(conf, "\n"+m.log+" {") || !strings.Contains(conf, pidFile) {
		t.Fatal("the logrotate rule no longer names /var/log/volfs.log and /run/volfs/*.pid")
	}
	dir := filepath.Dir(m.log)
	confPath := filepath.Join(dir, "logrotate.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("logrotate", "-v", "-f", "-s", filepath.Join(dir, "logrotate.state"), confPath).CombinedOutput()
	if err != nil {
		t.Fatalf("logrotate: %v\n%s", err, out)
	}
	waitFor(t, 10*time.Second, func() bool {
		b, _ := os.ReadFile(m.log)
		return strings.Contains(string(b), "reopened the log file")
	}, "the server did not reopen "+m.log+" after logrotate:\n"+string(out))
	if old, err := os.ReadFile(m.log + ".1"); err != nil || !strings.Contains(string(old), "msg=serving") {
		t.Errorf("rotated log %s.1: %v\n%s", m.log, err, old)
	}
	if err := os.WriteFile(m.path(dev), []byte("after logrotate"), 0); err != nil {
		t.Fatalf("mount after logrotate: %v", err)
	}
}
