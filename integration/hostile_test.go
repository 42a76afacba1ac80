package integration

import (
	"errors"
	"fmt"
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
	"golang.org/x/sys/unix"
)

// clientEnv makes the test binary a one-call client (asClient): TestMain
// runs clientCall instead of the tests.
const clientEnv = "VOLFS_TEST_CLIENT"

// clientBin is a copy of the test binary that another user can run (the
// build directory is root's alone).
var clientBin string

// clientCall makes one system call, args[0] naming it, and prints its
// errno's name ("ok" if none): the errno itself, which a shell tool's
// message would hide.
func clientCall(args []string) int {
	if len(args) < 2 {
		fmt.Println("usage: CALL PATH [ARG]")
		return 2
	}
	p, arg := args[1], ""
	if len(args) > 2 {
		arg = args[2]
	}
	openCall := func(flags int) error {
		fd, err := unix.Open(p, flags, 0o644)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	onReadOnly := func(f func(fd int) error) error {
		fd, err := unix.Open(p, unix.O_RDONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return f(fd)
	}
	var err error
	switch args[0] {
	case "open-rw":
		err = openCall(unix.O_RDWR)
	case "open-w":
		err = openCall(unix.O_WRONLY)
	case "open-r":
		err = openCall(unix.O_RDONLY)
	case "open-trunc":
		err = openCall(unix.O_WRONLY | unix.O_TRUNC)
	case "create":
		err = openCall(unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL)
	case "truncate":
		err = unix.Truncate(p, 1<<20)
	case "chmod":
		err = unix.Chmod(p, 0o666)
	case "chown":
		err = unix.Chown(p, os.Getuid(), os.Getgid())
	case "chgrp":
		err = unix.Chown(p, -1, os.Getgid())
	case "utimes":
		err = unix.UtimesNano(p, []unix.Timespec{{Sec: 1}, {Sec: 1}})
	case "utimes-now":
		err = unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_NOW}}, 0)
	case "setxattr":
		err = unix.Setxattr(p, arg, []byte("mine"), 0)
	case "removexattr":
		err = unix.Removexattr(p, arg)
	case "getxattr":
		_, err = unix.Getxattr(p, arg, make([]byte, 4096))
	case "rename":
		err = unix.Rename(p, arg)
	case "link":
		err = unix.Link(p, arg)
	case "symlink":
		err = unix.Symlink(p, arg)
	case "unlink":
		err = unix.Unlink(p)
	case "mkdir":
		err = unix.Mkdir(p, 0o755)
	case "rmdir":
		err = unix.Rmdir(p)
	case "mknod":
		err = unix.Mknod(p, unix.S_IFREG|0o644, 0)
	case "write-rdonly":
		err = onReadOnly(func(fd int) error { _, err := unix.Pwrite(fd, []byte("x"), 0); return err })
	case "fallocate-rdonly":
		err = onReadOnly(func(fd int) error { return unix.Fallocate(fd, 0, 0, 1<<20) })
	case "punch-rdonly":
		err = onReadOnly(func(fd int) error {
			return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096)
		})
	default:
		fmt.Println("unknown call", args[0])
		return 2
	}
	var en syscall.Errno
	switch {
	case err == nil:
		fmt.Println("ok")
	case errors.As(err, &en):
		fmt.Println(unix.ErrnoName(en))
	default:
		fmt.Println(err)
	}
	return 0
}

// nobody runs as the unprivileged user nobody (no groups).
func nobody(cmd *exec.Cmd) *exec.Cmd {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	return cmd
}

// asClient makes one call (clientCall) as nobody and returns its errno's
// name.
func asClient(t *testing.T, args ...string) string {
	t.Helper()
	if clientBin == "" {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		clientBin = filepath.Join(tmpRoot, "client")
		in, err := os.Open(self)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		out, err := os.OpenFile(clientBin, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
	cmd := nobody(exec.Command(clientBin, args...))
	cmd.Env = append(os.Environ(), clientEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client %q: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// An unprivileged user tries every operation on root's files (one it may
// read, one it may not) and in the mount's directory: each fails with the
// errno a local file system gives, and nothing a client can see changes
// (names, modes, owners, sizes, xattrs, content). The volfs commands it
// runs against the mount's control socket are refused with a message that
// says root is needed. TestPermissionsEnforced covers what the owner may
// do, and reads and writes by mode.
func TestHostileUser(t *testing.T) {
	testutil.RequireRoot(t)
	devs := []string{testutil.NewLoop(t, 4<<20), testutil.NewLoop(t, 4<<20)}
	m := newMount(t, devs)
	pub, priv := m.path(devs[0]), m.path(devs[1])
	sh(t, "dd", "if="+randomFile(t, 4<<20), "of="+pub, "bs=1M", "conv=notrunc", "status=none")
	sh(t, "dd", "if=/dev/urandom", "of="+priv, "bs=1M", "count=1", "conv=notrunc", "status=none")
	if err := os.Chmod(pub, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(priv, 0o600); err != nil {
		t.Fatal(err)
	}
	for x, v := range map[string]string{"user.a": "root's", "trusted.t": "secret"} {
		if err := unix.Setxattr(pub, x, []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	mtime := time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)
	for _, p := range []string{pub, priv} {
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	state := testutil.MountState(t, m.dir)
	stat := func(p string) (int64, int64) {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Mtim.Nano(), st.Ctim.Nano()
	}
	other := filepath.Join(m.dir, "new")
	for _, c := range []struct {
		want string
		args []string
	}{
		{"EACCES", []string{"open-rw", pub}},
		{"EACCES", []string{"open-w", pub}},
		{"EACCES", []string{"open-trunc", pub}},
		{"EACCES", []string{"open-r", priv}},
		{"EACCES", []string{"open-rw", priv}},
		{"EACCES", []string{"truncate", pub}},
		{"EBADF", []string{"write-rdonly", pub}},
		{"EBADF", []string{"fallocate-rdonly", pub}},
		{"EBADF", []string{"punch-rdonly", pub}},
		{"EPERM", []string{"chmod", pub}},
		{"EPERM", []string{"chmod", priv}},
		{"EPERM", []string{"chown", pub}},
		{"EPERM", []string{"chgrp", pub}},
		{"EPERM", []string{"utimes", pub}},
		{"EACCES", []string{"utimes-now", pub}},
		{"EACCES", []string{"setxattr", pub, "user.mine"}},
		{"EACCES", []string{"setxattr", pub, "user.a"}},
		{"EACCES", []string{"removexattr", pub, "user.a"}},
		{"EPERM", []string{"setxattr", pub, "trusted.mine"}},
		{"EPERM", []string{"setxattr", pub, "trusted.t"}},
		{"EPERM", []string{"removexattr", pub, "trusted.t"}},
		{"ENODATA", []string{"getxattr", pub, "trusted.t"}}, // not revealed
		{"EPERM", []string{"setxattr", pub, "security.mine"}},
		{"EACCES", []string{"rename", pub, other}},
		{"EACCES", []string{"rename", priv, pub}},
		{"EACCES", []string{"unlink", pub}},
		{"EACCES", []string{"create", other}},
		{"EACCES", []string{"mknod", other}},
		{"EACCES", []string{"mkdir", other}},
		{"EACCES", []string{"symlink", pub, other}},
		{"EPERM", []string{"link", pub, other}},
		{"EPERM", []string{"chmod", m.dir}},
		{"EPERM", []string{"chown", m.dir}},
		{"EPERM", []string{"utimes", m.dir}},
		{"EACCES", []string{"setxattr", m.dir, "user.mine"}},
		{"EACCES", []string{"rmdir", m.dir}},
	} {
		mt, ct := stat(pub)
		if got := asClient(t, c.args...); got != c.want {
			t.Errorf("nobody: %s: %s, want %s", strings.Join(c.args, " "), got, c.want)
		}
		if after := testutil.MountState(t, m.dir); after != state {
			t.Errorf("nobody: %s changed the mount:\nbefore:\n%s\nafter:\n%s", strings.Join(c.args, " "), state, after)
		}
		if mt2, ct2 := stat(pub); mt2 != mt || ct2 != ct {
			t.Errorf("nobody: %s changed %s's times (mtime %d -> %d, ctime %d -> %d)", strings.Join(c.args, " "), pub, mt, mt2, ct, ct2)
		}
	}
	// The commands that go through the control socket.
	for _, args := range [][]string{
		{"ls", m.dir}, {"status", m.dir}, {"umount", m.dir},
		{"snapshot", "create", pub, "s"}, {"snapshot", "list", pub}, {"snapshot", "delete", pub, "s"},
		{"snapshot", "rollback", pub, "s"}, {"clone", pub, other}, {"layout", pub}, {"layout", pub, "linear"},
	} {
		out, err := nobody(exec.Command(volfsBin, args...)).CombinedOutput()
		msg := strings.TrimSpace(string(out))
		if err == nil || !strings.Contains(msg, "root") || strings.Count(msg, "\n") > 0 {
			t.Errorf("nobody: volfs %s: %v %q, want a failure that says root is needed, in one line", strings.Join(args, " "), err, msg)
		}
		if after := testutil.MountState(t, m.dir); after != state {
			t.Errorf("nobody: volfs %s changed the mount:\n%s", strings.Join(args, " "), after)
		}
	}
	if ok, _ := isMounted(m.dir); !ok {
		t.Fatal("the mount is gone")
	}
}

// Extended attribute names are any bytes: ones that are not UTF-8 keep
// their bytes in the state file of a --device mount across a remount.
func TestXattrNamesAnyBytes(t *testing.T) {
	m, dev := setup(t, 4<<20)
	p := m.path(dev)
	names := []string{"user.\xff\xfe", "user.ü", "trusted.\x01\x7f", "user." + strings.Repeat("\xe6", 250)}
	for i, n := range names {
		if err := unix.Setxattr(p, n, []byte(strconv.Itoa(i)), 0); err != nil {
			t.Fatalf("setxattr %q: %v", n, err)
		}
	}
	before := testutil.MountState(t, m.dir)
	m.remount()
	if after := testutil.MountState(t, m.dir); after != before {
		t.Fatalf("after remount:\n%s\nbefore:\n%s", after, before)
	}
	for i, n := range names {
		buf := make([]byte, 16)
		if k, err := unix.Getxattr(p, n, buf); err != nil || string(buf[:k]) != strconv.Itoa(i) {
			t.Errorf("getxattr %q after remount: %q %v", n, buf[:k], err)
		}
	}
}
