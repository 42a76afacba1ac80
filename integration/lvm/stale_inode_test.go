package lvm

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A user keeps a file's inode with an O_PATH descriptor (no open through
// FUSE); another tool or host removes the file's LV and makes a new one,
// root's, under the same name. Reopening, chmod and truncate through
// /proc/self/fd/N reach the old inode, whose mode and owner the kernel
// checks: volfs must refuse them (ESTALE) rather than act on the LV the
// name has now. Before, the user read and wrote the new LV, a chmod wrote
// the user's owner into its tags, and the close trimmed it.
func TestStaleInodeNeverReachesNewLV(t *testing.T) {
	// The system's python3: nobody cannot run one under root's home.
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("needs /usr/bin/python3 for a process holding an O_PATH descriptor")
	}
	e := newVG(t)
	m := e.mount()
	// nobody must reach the mount: the test's directories are 0700.
	for d := filepath.Dir(m.dir); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sh(t, "cp", e.file("mine", int(4*mib), 1), m.path("web"))
	if err := os.Chown(m.path("web"), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(m.path("web"), 0o600); err != nil {
		t.Fatal(err)
	}
	oldIno := inoOf(t, m.path("web"))

	user := exec.Command(py, "-c", `import os, sys
fd = os.open(sys.argv[1], os.O_PATH)
print("held", flush=True)
sys.stdin.readline()
p = "/proc/self/fd/%d" % fd
def try_(what, f):
    try:
        r = f()
        print(what, "ok", r if r is not None else "", flush=True)
    except OSError as e:
        print(what, "errno", e.errno, flush=True)
def rw():
    g = os.open(p, os.O_RDWR)
    try:
        return os.pread(g, 64, 0).hex()
    finally:
        os.close(g)
try_("open", rw)
try_("chmod", lambda: os.chmod(p, 0o666))
try_("truncate", lambda: os.truncate(p, 4096))
print("done", flush=True)
`, m.path("web"))
	user.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	stdin, err := user.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := user.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	user.Stderr = os.Stderr
	if err := user.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = user.Process.Kill(); _ = user.Wait() })
	out := bufio.NewReader(stdout)
	if l, err := out.ReadString('\n'); err != nil || l != "held\n" {
		t.Fatalf("the user's process: %q, %v", l, err)
	}

	// Another tool (or host) replaces the LV: root's, with a secret.
	sh(t, "lvremove", "-q", "-y", e.vg+"/web")
	sh(t, "lvcreate", "-q", "-Wn", "-L", "8m", "-n", "web", e.vg)
	secret := bytes.Repeat([]byte("root's new volume "), 1000)
	sf := filepath.Join(e.base, "secret")
	if err := os.WriteFile(sf, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	sh(t, "dd", "if="+sf, "of=/dev/"+e.vg+"/web", "conv=fsync", "status=none")
	before := e.lv("web")
	waitFor(t, "the new LV listed as another file", externalDelay, func() bool {
		st, err := os.Stat(m.path("web"))
		return err == nil && st.Sys().(*syscall.Stat_t).Ino != oldIno
	})

	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for {
		l, err := out.ReadString('\n')
		if err != nil {
			t.Fatalf("the user's process: %v after %q", err, lines)
		}
		if l == "done\n" {
			break
		}
		lines = append(lines, strings.TrimSpace(l))
	}
	t.Logf("through the old inode: %q", lines)
	for _, l := range lines {
		if !strings.HasSuffix(l, "errno 116") { // ESTALE
			t.Errorf("through the old inode: %q, want ESTALE", l)
		}
		if strings.Contains(l, "726f6f74") { // "root"
			t.Errorf("the user read the new LV: %q", l)
		}
	}
	time.Sleep(time.Second) // a release the refused open could have sent
	after := e.lv("web")
	if after.UUID != before.UUID || after.Size != before.Size || len(after.Tags) != 0 {
		t.Errorf("the new LV was changed: before %+v, after %+v", before, after)
	}
	if st, err := os.Stat(m.path("web")); err != nil || st.Mode().Perm() != 0o600 ||
		st.Sys().(*syscall.Stat_t).Uid != 0 || st.Size() != 8*mib {
		t.Errorf("the new file: %v, %v; want 0600 root, 8 MiB", st, err)
	}
	if !bytes.Equal(fileBytes(t, m.path("web"), 0, int64(len(secret))), secret) {
		t.Error("the new LV's bytes changed")
	}
}
