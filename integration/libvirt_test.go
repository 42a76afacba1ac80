package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/testutil"
)

// A VM whose disk is a volfs file starts under libvirt's default
// configuration: libvirt remembers the image's owner in trusted.* xattrs,
// hands the file to QEMU's user, QEMU writes through it with cache=none and
// native AIO, and at destroy the owner comes back and the xattrs go.
func TestLibvirtDomainOnVolfsFile(t *testing.T) {
	testutil.Need(t, "qemu-system-x86_64")
	m, dev := setup(t, 64<<20)
	p := m.path(dev)
	if err := os.Chown(p, 123, 456); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	l := testutil.StartLibvirtd(t, tmpRoot)
	emulator, _ := exec.LookPath("qemu-system-x86_64")
	name := "volfs-test-" + strconv.Itoa(os.Getpid())
	xml := filepath.Join(l.Dir, "domain.xml")
	if err := os.WriteFile(xml, testutil.DomainXML(name, emulator, p), 0o644); err != nil {
		t.Fatal(err)
	}
	l.Virsh("create", xml)

	// libvirt gave the file to QEMU's user and remembered the owner.
	pid := l.QemuPid(name)
	quid := procUID(t, pid)
	st := stat(t, p)
	if st.Uid != quid || quid == 0 {
		t.Errorf("while the VM runs the image is owned by %d:%d; QEMU runs as uid %d", st.Uid, st.Gid, quid)
	}
	for attr, want := range map[string]string{
		"trusted.libvirt.security.dac":     "+123:+456",
		"trusted.libvirt.security.ref_dac": "1",
	} {
		if got := xattr(t, p, attr); got != want {
			t.Errorf("%s = %q, want %q", attr, got, want)
		}
	}
	if xattr(t, p, "trusted.libvirt.security.timestamp_dac") == "" {
		t.Error("libvirt left no trusted.libvirt.security.timestamp_dac")
	}
	// cache='none': QEMU opened the image O_DIRECT.
	if flags := fdFlags(t, pid, p); flags&syscall.O_DIRECT == 0 {
		t.Errorf("QEMU opened the image without O_DIRECT (flags %o)", flags)
	}

	// QEMU writes through the file; the bytes are on the device.
	want := bytes.Repeat([]byte{0x5a}, 128<<10)
	l.Virsh("qemu-monitor-command", name, "--hmp", fmt.Sprintf(`qemu-io -d %s "write -P 0x5a %d %d"`, testutil.VdaQOM, 1<<20, len(want)))
	l.Virsh("qemu-monitor-command", name, "--hmp", fmt.Sprintf(`qemu-io -d %s "flush"`, testutil.VdaQOM))
	if got := deviceBytes(t, dev, 1<<20, int64(len(want))); !bytes.Equal(got, want) {
		t.Errorf("the device does not hold what QEMU wrote through the file")
	}
	if got := deviceBytes(t, dev, 1<<20-4096, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Errorf("QEMU's write spilled before its offset")
	}

	l.Virsh("destroy", name)
	st = stat(t, p)
	if st.Uid != 123 || st.Gid != 456 || st.Mode&07777 != 0o600 {
		t.Errorf("after destroy the image is %d:%d mode %o, want 123:456 mode 600", st.Uid, st.Gid, st.Mode&07777)
	}
	if names := xattrNames(t, p); len(names) != 0 {
		t.Errorf("xattrs left after destroy: %q", names)
	}
	l.Stop() // its namespace holds a copy of the mount
	m.remount()
	if st := stat(t, p); st.Uid != 123 || st.Gid != 456 {
		t.Errorf("after remount the image is %d:%d, want 123:456", st.Uid, st.Gid)
	}
	if names := xattrNames(t, p); len(names) != 0 {
		t.Errorf("xattrs back after remount: %q", names)
	}
}

func xattr(t testing.TB, path, name string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, name, buf)
	if errors.Is(err, unix.ENODATA) {
		return ""
	}
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", path, name, err)
	}
	return string(buf[:n])
}

func xattrNames(t testing.TB, path string) []string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Listxattr(path, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", path, err)
	}
	return strings.FieldsFunc(string(buf[:n]), func(r rune) bool { return r == 0 })
}

// procUID is the real uid of a process.
func procUID(t testing.TB, pid int) uint32 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid, err := strconv.ParseUint(strings.Fields(v)[0], 10, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(uid)
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return 0
}

// fdFlags are the open flags of the descriptor process pid holds on path.
func fdFlags(t testing.TB, pid int, path string) int {
	t.Helper()
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		if target, _ := os.Readlink(fd); target != path {
			continue
		}
		b, err := os.ReadFile(strings.Replace(fd, "/fd/", "/fdinfo/", 1))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				f, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatal(err)
				}
				return int(f)
			}
		}
	}
	t.Fatalf("pid %d has no descriptor on %s", pid, path)
	return 0
}

// deviceBytes reads the block device itself, past any cache.
func deviceBytes(t testing.TB, dev string, off, n int64) []byte {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := aligned(int(n))
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s at %d: %v", dev, off, err)
	}
	return buf
}

// A libvirt dir pool on a --device mount lists the device files as
// volumes and moves bytes in and out of them; creating a volume is refused
// (devices cannot be created).
func TestLibvirtDirPoolOnDevices(t *testing.T) {
	m, dev := setup(t, 16<<20)
	l := testutil.StartLibvirtd(t, tmpRoot)
	l.Virsh("pool-define-as", "volfs", "dir", "--target", m.dir)
	l.Virsh("pool-start", "volfs")
	vol := filepath.Base(dev)
	if out := l.Virsh("vol-list", "--pool", "volfs"); !strings.Contains(out, m.path(dev)) {
		t.Errorf("vol-list does not show %s:\n%s", m.path(dev), out)
	}
	if out := l.Virsh("vol-info", "--pool", "volfs", vol, "--bytes"); !strings.Contains(out, strconv.Itoa(16<<20)+" bytes") {
		t.Errorf("vol-info:\n%s", out)
	}
	src := randomFile(t, 3<<20+512)
	l.Virsh("vol-upload", "--pool", "volfs", vol, src)
	if sha(t, dev, 3<<20+512) != sha(t, src, 3<<20+512) {
		t.Error("the device does not hold what vol-upload sent")
	}
	back := filepath.Join(t.TempDir(), "back")
	l.Virsh("vol-download", "--pool", "volfs", vol, back)
	if st, err := os.Stat(back); err != nil || st.Size() != 16<<20 || sha(t, back, 3<<20+512) != sha(t, src, 3<<20+512) {
		t.Errorf("vol-download: %v, or other bytes than uploaded", err)
	}
	out, err := exec.Command("virsh", "-c", l.URI, "vol-create-as", "volfs", "new", "1M", "--format", "raw").CombinedOutput()
	if err == nil {
		t.Errorf("vol-create-as on a --device mount succeeded: %s", out)
	}
	l.Virsh("pool-destroy", "volfs")
	l.Virsh("pool-undefine", "volfs")
}
