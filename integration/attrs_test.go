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

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/testutil"
)

// asNobody runs a shell command as uid/gid 65534.
func asNobody(cmd string) (string, error) {
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", cmd).CombinedOutput()
	return string(out), err
}

func TestPermissionsEnforced(t *testing.T) {
	testutil.Need(t, "setpriv")
	m, dev := setup(t, 16<<20)
	p := m.path(dev)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := asNobody("head -c 1 " + p + " >/dev/null"); err != nil {
		t.Fatalf("an unprivileged user cannot read a 0644 image: %v %s", err, out)
	}
	if out, err := asNobody("echo x | dd of=" + p + " conv=notrunc status=none"); err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("an unprivileged user wrote a 0644 root image: %v %s", err, out)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := asNobody("head -c 16 " + p); err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("an unprivileged user read a 0600 root image: %v %s", err, out)
	}
	if out, err := asNobody("echo x | dd of=" + p + " conv=notrunc status=none"); err == nil {
		t.Fatalf("an unprivileged user wrote a 0600 root image: %s", out)
	}
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if out, err := asNobody("printf owned | dd of=" + p + " conv=notrunc status=none && head -c 5 " + p); err != nil || out != "owned" {
		t.Fatalf("the owner cannot use the image after chown: %v %q", err, out)
	}
	// The owner may chmod; others may not chown.
	if out, err := asNobody("chmod 0644 " + p); err != nil {
		t.Fatalf("owner chmod: %v %s", err, out)
	}
	if out, err := asNobody("chown 0 " + p); err == nil {
		t.Fatalf("an unprivileged user gave the file away: %s", out)
	}
}

func TestAttributesSurviveRemount(t *testing.T) {
	m, dev := setup(t, 16<<20)
	p := m.path(dev)
	st0 := stat(t, p)
	mtime := time.Date(2024, 2, 29, 12, 0, 0, 123456789, time.UTC)
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 107, 108); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "user.origin", []byte("base image v2"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "trusted.libvirt.security.dac", []byte("+107:+108"), 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := unix.Getxattr(p, "user.missing", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("missing xattr: %v, want ENODATA", err)
	}
	m.remount()
	st := stat(t, p)
	if st.Mode&07777 != 0o640 || st.Uid != 107 || st.Gid != 108 {
		t.Errorf("after remount: mode %o owner %d:%d", st.Mode&07777, st.Uid, st.Gid)
	}
	if got := time.Unix(st.Mtim.Unix()); !got.Equal(mtime) {
		t.Errorf("after remount: mtime %v, want %v", got, mtime)
	}
	if st.Ino != st0.Ino {
		t.Errorf("inode number changed across remount: %d -> %d", st0.Ino, st.Ino)
	}
	n, err := unix.Getxattr(p, "user.origin", buf)
	if err != nil || string(buf[:n]) != "base image v2" {
		t.Errorf("xattr after remount: %q %v", buf[:n], err)
	}
	if n, err := unix.Getxattr(p, "trusted.libvirt.security.dac", buf); err != nil || string(buf[:n]) != "+107:+108" {
		t.Errorf("trusted xattr after remount: %q %v", buf[:n], err)
	}
	if n, err := unix.Listxattr(p, buf); err != nil || string(buf[:n]) != "trusted.libvirt.security.dac\x00user.origin\x00" {
		t.Errorf("listxattr: %q %v", buf[:n], err)
	}
	if err := unix.Removexattr(p, "trusted.libvirt.security.dac"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Removexattr(p, "user.origin"); err != nil {
		t.Fatal(err)
	}
	// A write moves mtime; it is persisted on close without a tag per write.
	before := time.Now()
	if err := os.WriteFile(p, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	m.remount()
	st = stat(t, p)
	if got := time.Unix(st.Mtim.Unix()); got.Before(before.Add(-time.Second)) {
		t.Errorf("mtime of a write not persisted: %v < %v", got, before)
	}
	if _, err := unix.Getxattr(p, "user.origin", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("removed xattr came back: %v", err)
	}
}

func stat(t testing.TB, p string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

func TestReadOnlyMount(t *testing.T) {
	m, dev := setup(t, 16<<20, "--read-only")
	p := m.path(dev)
	if _, err := os.OpenFile(p, os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open for write on a read-only mount: %v, want EROFS", err)
	}
	if err := os.Chmod(p, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("chmod on a read-only mount: %v, want EROFS", err)
	}
	if _, err := os.ReadFile(p); err != nil {
		t.Errorf("read on a read-only mount: %v", err)
	}
}

// A device driver exposes what exists: it cannot create, remove, rename or
// resize, and says so with EPERM.
func TestDeviceFilesCannotChangeShape(t *testing.T) {
	m, dev := setup(t, 16<<20)
	p := m.path(dev)
	if _, err := os.Create(filepath.Join(m.dir, "new")); !errors.Is(err, syscall.EPERM) {
		t.Errorf("create: %v, want EPERM", err)
	}
	if err := os.Remove(p); !errors.Is(err, syscall.EPERM) {
		t.Errorf("remove: %v, want EPERM", err)
	}
	if err := os.Rename(p, filepath.Join(m.dir, "other")); !errors.Is(err, syscall.EPERM) {
		t.Errorf("rename: %v, want EPERM", err)
	}
	if err := os.Truncate(p, 8<<20); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate to another size: %v, want EPERM", err)
	}
	if err := os.Truncate(p, 16<<20); err != nil {
		t.Errorf("truncate to the current size: %v", err)
	}
	if err := os.Mkdir(filepath.Join(m.dir, "d"), 0o755); err == nil {
		t.Error("mkdir succeeded")
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("x"), 16<<20); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write past the device's end: %v, want ENOSPC", err)
	}
	if n, err := unix.Pwrite(int(f.Fd()), make([]byte, 8192), 16<<20-4096); n != 4096 {
		t.Errorf("write across the device's end: %d, %v; want a short write of 4096", n, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(m.dir, &sfs); err != nil || int64(sfs.Blocks)*sfs.Bsize != 16<<20 {
		t.Errorf("statfs: %d blocks of %d, %v", sfs.Blocks, sfs.Bsize, err)
	}
}

// fdatasync flushes data only: what qemu calls on every guest flush must not
// rewrite attributes each time. fsync persists them.
func TestFdatasyncLeavesAttributes(t *testing.T) {
	m, dev := setup(t, 16<<20)
	p := m.path(dev)
	if err := os.Chmod(p, 0o640); err != nil { // creates the state file
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(m.state, "*", "*.json"))
	if len(files) != 1 {
		t.Fatalf("state files: %v", files)
	}
	before, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 50 {
		if _, err := f.WriteAt([]byte("data"), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			t.Fatal(err)
		}
	}
	if after, err := os.Stat(files[0]); err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("fdatasync rewrote the state file (%v -> %v, %v)", before.ModTime(), after.ModTime(), err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if after, err := os.Stat(files[0]); err != nil || after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("fsync after writes did not persist the new mtime (%v)", err)
	}
}

// trusted.* xattrs are stored like user.* ones, but only for CAP_SYS_ADMIN:
// the kernel refuses others' get and set, and the server leaves the names
// out of their listings. Namespaces volfs does not store answer ENOTSUP to
// get and set alike (libvirt asks before it sets), the POSIX ACLs and the
// SELinux label too (`ls -l` then stops asking for them after the first
// file), except the kernel's own query for security.capability, which
// finds nothing.
func TestXattrNamespaces(t *testing.T) {
	testutil.Need(t, "setpriv", "getfattr", "setfattr")
	m, dev := setup(t, 16<<20)
	p := m.path(dev)
	if err := os.Chmod(p, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "trusted.secret", []byte("root only"), 0); err != nil {
		t.Fatalf("root sets trusted.*: %v", err)
	}
	if out, err := asNobody("setfattr -n user.mine -v yes " + p); err != nil {
		t.Fatalf("nobody sets user.* on a 0666 file: %v %s", err, out)
	}
	if out, err := asNobody("setfattr -n trusted.x -v 1 " + p); err == nil || !strings.Contains(out, "not permitted") {
		t.Errorf("nobody set a trusted.* xattr: %v %s", err, out)
	}
	if out, err := asNobody("getfattr --only-values -n trusted.secret " + p); err == nil || strings.Contains(out, "root only") {
		t.Errorf("nobody read a trusted.* xattr: %v %s", err, out)
	}
	out, err := asNobody("getfattr --absolute-names -d -m - " + p)
	if err != nil || strings.Contains(out, "trusted.") || !strings.Contains(out, "user.mine") {
		t.Errorf("nobody's listing: %v %q (want user.mine, no trusted.*)", err, out)
	}
	buf := make([]byte, 256)
	n, err := unix.Listxattr(p, buf)
	if err != nil || string(buf[:n]) != "trusted.secret\x00user.mine\x00" {
		t.Errorf("root's listing: %q %v", buf[:n], err)
	}
	if n, err := unix.Getxattr(p, "trusted.secret", buf); err != nil || string(buf[:n]) != "root only" {
		t.Errorf("root reads trusted.secret: %q %v", buf[:n], err)
	}
	if _, err := unix.Getxattr(p, "trusted.missing", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("missing trusted xattr: %v, want ENODATA", err)
	}
	for _, name := range []string{"security.volfs", "system.volfs", "other.volfs"} {
		if _, err := unix.Getxattr(p, name, buf); !errors.Is(err, unix.ENOTSUP) {
			t.Errorf("get %s: %v, want ENOTSUP", name, err)
		}
		if err := unix.Setxattr(p, name, []byte("x"), 0); !errors.Is(err, unix.ENOTSUP) {
			t.Errorf("set %s: %v, want ENOTSUP", name, err)
		}
	}
	// Set through the kernel, these fail before they reach the server.
	for _, name := range []string{"system.posix_acl_access", "system.posix_acl_default", "security.selinux"} {
		if _, err := unix.Getxattr(p, name, buf); !errors.Is(err, unix.ENOTSUP) {
			t.Errorf("get %s: %v, want ENOTSUP", name, err)
		}
	}
	if _, err := unix.Getxattr(p, "security.capability", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("get security.capability: %v, want ENODATA", err)
	}
	// An ENOTSUP answer must not turn xattrs off for the mount (ENOSYS
	// would): stored namespaces still work afterwards.
	if n, err := unix.Getxattr(p, "user.mine", buf); err != nil || string(buf[:n]) != "yes" {
		t.Errorf("user.mine after ENOTSUP answers: %q %v", buf[:n], err)
	}
	m.remount()
	if n, err := unix.Getxattr(p, "trusted.secret", buf); err != nil || string(buf[:n]) != "root only" {
		t.Errorf("trusted.secret after remount: %q %v", buf[:n], err)
	}
}
