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
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/testutil"
)

// libvirtd is a real libvirt daemon (with the virtlogd it logs QEMU's
// output through) that a test starts and stops. It runs with the host's
// own configuration (Debian's default qemu.conf: dynamic_ownership and
// remember_owner on) but in a private mount namespace where its state
// directories (/run/libvirt, /var/lib/libvirt, /var/log/libvirt,
// /var/cache/libvirt) are empty directories of the test and /etc/libvirt is
// a copy: it neither sees nor disturbs a libvirtd of the machine, and
// leaves nothing behind (pool-define-as writes into the copy).
// Mounts made after it starts are not visible to it: mount volfs first.
// Its namespace holds a copy of every mount, so a volfs server exits only
// once libvirtd is stopped: stop it before an unmount.
type libvirtd struct {
	t      testing.TB
	dir    string
	uri    string
	cmd    *exec.Cmd
	exited chan error
	once   sync.Once
	// madeRun: /run/libvirt did not exist (no libvirtd on this boot),
	// the namespace made it as a mount point; stop removes it.
	madeRun bool
}

// The namespace's setup; $1 is the test's directory.
const libvirtdScript = `set -e
d=$1
for s in run lib log cache; do mkdir -p "$d/$s"; done
cp -a /etc/libvirt "$d/etc"
mount --bind "$d/etc" /etc/libvirt
[ -d /run/libvirt ] || mkdir -p /run/libvirt
mount --bind "$d/run" /run/libvirt
mount --bind "$d/lib" /var/lib/libvirt
mount --bind "$d/log" /var/log/libvirt
mount --bind "$d/cache" /var/cache/libvirt
virtlogd --daemon --pid-file "$d/virtlogd.pid"
exec libvirtd --pid-file "$d/libvirtd.pid"
`

func startLibvirtd(t testing.TB) *libvirtd {
	t.Helper()
	testutil.Need(t, "libvirtd", "virtlogd", "virsh", "unshare", "qemu-system-x86_64")
	if _, err := os.Stat("/etc/libvirt/qemu.conf"); err != nil {
		t.Skip("needs libvirt's QEMU driver configuration (/etc/libvirt/qemu.conf, package libvirt-daemon-system)")
	}
	dir, err := os.MkdirTemp(tmpRoot, "libvirt-")
	if err != nil {
		t.Fatal(err)
	}
	l := &libvirtd{t: t, dir: dir, uri: "qemu:///system?socket=" + filepath.Join(dir, "run", "libvirt-sock")}
	if _, err := os.Stat("/run/libvirt"); errors.Is(err, os.ErrNotExist) {
		l.madeRun = true
	}
	logf, err := os.Create(filepath.Join(dir, "libvirtd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	l.cmd = exec.Command("unshare", "--mount", "--propagation", "slave", "sh", "-c", libvirtdScript, "sh", dir)
	l.cmd.Stdout, l.cmd.Stderr = logf, logf
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.exited = make(chan error, 1)
	go func() { l.exited <- l.cmd.Wait() }()
	t.Cleanup(l.stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := exec.Command("virsh", "-c", l.uri, "version").Run()
		if err == nil {
			return l
		}
		select {
		case err := <-l.exited:
			l.exited <- err
			t.Fatalf("libvirtd exited: %v\n%s", err, l.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd did not answer within 30 s: %v\n%s", err, l.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *libvirtd) logs() string {
	b, _ := os.ReadFile(filepath.Join(l.dir, "libvirtd.log"))
	return string(b)
}

// stop destroys every domain still running, then stops libvirtd and
// virtlogd and waits until they are gone. Only the first call acts.
func (l *libvirtd) stop() { l.once.Do(l.stopOnce) }

func (l *libvirtd) stopOnce() {
	out, _ := exec.Command("virsh", "-c", l.uri, "list", "--name").Output()
	for _, name := range strings.Fields(string(out)) {
		if b, err := exec.Command("virsh", "-c", l.uri, "destroy", name).CombinedOutput(); err != nil {
			l.t.Errorf("virsh destroy %s: %v: %s", name, err, b)
		}
	}
	// A QEMU that libvirtd lost track of would keep the mount busy.
	pids, _ := filepath.Glob(filepath.Join(l.dir, "run", "qemu", "*.pid"))
	for _, p := range pids {
		killPidFile(l.t, p)
	}
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.exited:
	case <-time.After(30 * time.Second):
		l.t.Errorf("libvirtd did not exit on SIGTERM; killing it")
		_ = l.cmd.Process.Kill()
		<-l.exited
	}
	killPidFile(l.t, filepath.Join(l.dir, "virtlogd.pid"))
	if l.madeRun {
		_ = os.Remove("/run/libvirt") // only if still empty
	}
	if l.t.Failed() {
		l.t.Logf("libvirtd log:\n%s", l.logs())
		logs, _ := filepath.Glob(filepath.Join(l.dir, "log", "qemu", "*.log"))
		for _, p := range logs {
			b, _ := os.ReadFile(p)
			l.t.Logf("%s:\n%s", p, b)
		}
	}
}

// killPidFile ends the process a pid file names (one this test started)
// and waits until it is gone.
func killPidFile(t testing.TB, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	if syscall.Kill(pid, syscall.SIGTERM) != nil {
		return
	}
	for i := 0; i < 300; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("pid %d (%s) did not exit on SIGTERM; killing it", pid, path)
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

func (l *libvirtd) virsh(args ...string) string {
	l.t.Helper()
	return sh(l.t, "virsh", append([]string{"-c", l.uri}, args...)...)
}

// qemuPid is the pid of a running domain's QEMU.
func (l *libvirtd) qemuPid(name string) int {
	l.t.Helper()
	b, err := os.ReadFile(filepath.Join(l.dir, "run", "qemu", name+".pid"))
	if err != nil {
		l.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		l.t.Fatal(err)
	}
	return pid
}

// TCG, no OS: the BIOS finds nothing to boot and waits, which is all a
// disk test needs.
const domainXML = `<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>%s</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
`

// The HMP qemu-io command addresses the guest's disk by its QOM path.
const vdaQOM = "/machine/peripheral/virtio-disk0/virtio-backend"

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
	l := startLibvirtd(t)
	emulator, _ := exec.LookPath("qemu-system-x86_64")
	name := "volfs-test-" + strconv.Itoa(os.Getpid())
	xml := filepath.Join(l.dir, "domain.xml")
	if err := os.WriteFile(xml, fmt.Appendf(nil, domainXML, name, emulator, p), 0o644); err != nil {
		t.Fatal(err)
	}
	l.virsh("create", xml)

	// libvirt gave the file to QEMU's user and remembered the owner.
	pid := l.qemuPid(name)
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
	l.virsh("qemu-monitor-command", name, "--hmp", fmt.Sprintf(`qemu-io -d %s "write -P 0x5a %d %d"`, vdaQOM, 1<<20, len(want)))
	l.virsh("qemu-monitor-command", name, "--hmp", fmt.Sprintf(`qemu-io -d %s "flush"`, vdaQOM))
	if got := deviceBytes(t, dev, 1<<20, int64(len(want))); !bytes.Equal(got, want) {
		t.Errorf("the device does not hold what QEMU wrote through the file")
	}
	if got := deviceBytes(t, dev, 1<<20-4096, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Errorf("QEMU's write spilled before its offset")
	}

	l.virsh("destroy", name)
	st = stat(t, p)
	if st.Uid != 123 || st.Gid != 456 || st.Mode&07777 != 0o600 {
		t.Errorf("after destroy the image is %d:%d mode %o, want 123:456 mode 600", st.Uid, st.Gid, st.Mode&07777)
	}
	if names := xattrNames(t, p); len(names) != 0 {
		t.Errorf("xattrs left after destroy: %q", names)
	}
	l.stop() // its namespace holds a copy of the mount
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
	l := startLibvirtd(t)
	l.virsh("pool-define-as", "volfs", "dir", "--target", m.dir)
	l.virsh("pool-start", "volfs")
	vol := filepath.Base(dev)
	if out := l.virsh("vol-list", "--pool", "volfs"); !strings.Contains(out, m.path(dev)) {
		t.Errorf("vol-list does not show %s:\n%s", m.path(dev), out)
	}
	if out := l.virsh("vol-info", "--pool", "volfs", vol, "--bytes"); !strings.Contains(out, strconv.Itoa(16<<20)+" bytes") {
		t.Errorf("vol-info:\n%s", out)
	}
	src := randomFile(t, 3<<20+512)
	l.virsh("vol-upload", "--pool", "volfs", vol, src)
	if sha(t, dev, 3<<20+512) != sha(t, src, 3<<20+512) {
		t.Error("the device does not hold what vol-upload sent")
	}
	back := filepath.Join(t.TempDir(), "back")
	l.virsh("vol-download", "--pool", "volfs", vol, back)
	if st, err := os.Stat(back); err != nil || st.Size() != 16<<20 || sha(t, back, 3<<20+512) != sha(t, src, 3<<20+512) {
		t.Errorf("vol-download: %v, or other bytes than uploaded", err)
	}
	out, err := exec.Command("virsh", "-c", l.uri, "vol-create-as", "volfs", "new", "1M", "--format", "raw").CombinedOutput()
	if err == nil {
		t.Errorf("vol-create-as on a --device mount succeeded: %s", out)
	}
	l.virsh("pool-destroy", "volfs")
	l.virsh("pool-undefine", "volfs")
}
