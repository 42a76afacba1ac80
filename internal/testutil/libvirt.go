package testutil

import (
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
)

// Libvirtd is a real libvirt daemon (with the virtlogd it logs QEMU's
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
type Libvirtd struct {
	t testing.TB
	// Dir holds the daemon's state, logs and pid files.
	Dir string
	// URI connects virsh to it.
	URI    string
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
[ ! -f "$d/qemu.conf.extra" ] || cat "$d/qemu.conf.extra" >>"$d/etc/qemu.conf"
mount --bind "$d/etc" /etc/libvirt
[ -d /run/libvirt ] || mkdir -p /run/libvirt
mount --bind "$d/run" /run/libvirt
mount --bind "$d/lib" /var/lib/libvirt
mount --bind "$d/log" /var/log/libvirt
mount --bind "$d/cache" /var/cache/libvirt
virtlogd --daemon --pid-file "$d/virtlogd.pid"
exec libvirtd --pid-file "$d/libvirtd.pid"
`

// StartLibvirtd starts libvirtd with a directory under base and stops it
// when the test ends. It skips the test when libvirt is not installed.
// qemuConf lines are added to the copy of qemu.conf (none: the defaults).
func StartLibvirtd(t testing.TB, base string, qemuConf ...string) *Libvirtd {
	t.Helper()
	Need(t, "libvirtd", "virtlogd", "virsh", "unshare", "qemu-system-x86_64")
	if _, err := os.Stat("/etc/libvirt/qemu.conf"); err != nil {
		t.Skip("needs libvirt's QEMU driver configuration (/etc/libvirt/qemu.conf, package libvirt-daemon-system)")
	}
	dir, err := os.MkdirTemp(base, "libvirt-")
	if err != nil {
		t.Fatal(err)
	}
	l := &Libvirtd{t: t, Dir: dir, URI: "qemu:///system?socket=" + filepath.Join(dir, "run", "libvirt-sock")}
	if _, err := os.Stat("/run/libvirt"); errors.Is(err, os.ErrNotExist) {
		l.madeRun = true
	}
	logf, err := os.Create(filepath.Join(dir, "libvirtd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	if len(qemuConf) > 0 {
		if err := os.WriteFile(filepath.Join(dir, "qemu.conf.extra"), []byte(strings.Join(qemuConf, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l.cmd = exec.Command("unshare", "--mount", "--propagation", "slave", "sh", "-c", libvirtdScript, "sh", dir)
	l.cmd.Stdout, l.cmd.Stderr = logf, logf
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.exited = make(chan error, 1)
	go func() { l.exited <- l.cmd.Wait() }()
	t.Cleanup(l.Stop)
	deadline := time.Now().Add(2 * time.Minute) // the QEMU driver probes QEMU first (slow under TCG)
	for {
		err := exec.Command("virsh", "-c", l.URI, "version").Run()
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
			t.Fatalf("libvirtd did not answer within 2 min: %v\n%s", err, l.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *Libvirtd) logs() string {
	b, _ := os.ReadFile(filepath.Join(l.Dir, "libvirtd.log"))
	return string(b)
}

// Stop destroys every domain still running, then stops libvirtd and
// virtlogd and waits until they are gone. Only the first call acts.
func (l *Libvirtd) Stop() { l.once.Do(l.stopOnce) }

func (l *Libvirtd) stopOnce() {
	out, _ := exec.Command("virsh", "-c", l.URI, "list", "--name").Output()
	for _, name := range strings.Fields(string(out)) {
		if b, err := exec.Command("virsh", "-c", l.URI, "destroy", name).CombinedOutput(); err != nil {
			l.t.Errorf("virsh destroy %s: %v: %s", name, err, b)
		}
	}
	// A QEMU that libvirtd lost track of would keep the mount busy.
	pids, _ := filepath.Glob(filepath.Join(l.Dir, "run", "qemu", "*.pid"))
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
	killPidFile(l.t, filepath.Join(l.Dir, "virtlogd.pid"))
	if l.madeRun {
		_ = os.Remove("/run/libvirt") // only if still empty
	}
	if l.t.Failed() {
		l.t.Logf("libvirtd log:\n%s", l.logs())
		logs, _ := filepath.Glob(filepath.Join(l.Dir, "log", "qemu", "*.log"))
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

// Virsh runs virsh on the daemon and fails the test when it fails.
func (l *Libvirtd) Virsh(args ...string) string {
	l.t.Helper()
	out, err := exec.Command("virsh", append([]string{"-c", l.URI}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("virsh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// QemuPid is the pid of a running domain's QEMU.
func (l *Libvirtd) QemuPid(name string) int {
	l.t.Helper()
	b, err := os.ReadFile(filepath.Join(l.Dir, "run", "qemu", name+".pid"))
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

// VdaQOM is the QOM path by which the HMP qemu-io command addresses the
// disk of DomainXML.
const VdaQOM = "/machine/peripheral/virtio-disk0/virtio-backend"

// DomainXML is a minimal domain whose one disk (vda) is the raw image at
// disk, opened with cache=none and native AIO.
func DomainXML(name, emulator, disk string) []byte {
	return fmt.Appendf(nil, domainXML, name, emulator, disk)
}
