package lvm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/volfs/volfs/internal/testutil"
)

func statT(t testing.TB, p string) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// trusted.* xattrs (libvirt's remembered owner) live in the LV's tags like
// user.* ones and travel with renames; --uid, --gid and --file-mode give
// new files and untagged LVs the hypervisor's owner, and an untagged LV
// gets no tags until it changes.
func TestTrustedXattrsAndDefaultOwner(t *testing.T) {
	e := newVG(t)
	sh(t, "lvcreate", "-q", "-L", "8m", "-n", "ext", e.vg)
	// An untagged LV the host uses (a mounted file system, as the host's
	// root or swap LV in the same VG): the defaults are for images, and
	// would give the host to the hypervisor's group.
	sh(t, "lvcreate", "-q", "-L", "8m", "-n", "sys", e.vg)
	sh(t, "mkfs.ext4", "-q", "-F", "/dev/"+e.vg+"/sys")
	fsDir := t.TempDir()
	sh(t, "mount", "/dev/"+e.vg+"/sys", fsDir)
	t.Cleanup(func() { _, _ = try("umount", fsDir) })
	flags := []string{"--uid", "64055", "--gid", "107", "--file-mode", "0660"}
	m := e.mount(flags...)
	if st := statT(t, m.path("ext")); st.Uid != 64055 || st.Gid != 107 || st.Mode&07777 != 0o660 {
		t.Errorf("untagged LV: %d:%d mode %o, want 64055:107 mode 660", st.Uid, st.Gid, st.Mode&07777)
	}
	if st := statT(t, m.path("sys")); st.Uid != 0 || st.Gid != 0 || st.Mode&07777 != 0o600 {
		t.Errorf("an untagged LV mounted on the host: %d:%d mode %o, want root 0600 (not the mount's defaults)",
			st.Uid, st.Gid, st.Mode&07777)
	}
	if tags := e.lv("ext").Tags; len(tags) != 0 {
		t.Errorf("an untagged LV got tags by being looked at: %v", tags)
	}
	sh(t, "touch", m.path("new"))
	if st := statT(t, m.path("new")); st.Uid != 64055 || st.Gid != 107 || st.Mode&07777 != 0o660 {
		t.Errorf("new file: %d:%d mode %o, want 64055:107 mode 660", st.Uid, st.Gid, st.Mode&07777)
	}
	e.waitLV("new", "owner and mode in tags", func(l lv) bool {
		return l.hasTag("volfs.owner=64055:107") && l.hasTag("volfs.mode=0660")
	})
	sh(t, "setfattr", "-n", "trusted.libvirt.security.dac", "-v", "+0:+0", m.path("new"))
	sh(t, "setfattr", "-n", "user.k", "-v", "v", m.path("new"))
	sh(t, "mv", m.path("new"), m.path("renamed"))
	m.umount()
	m.args = m.args[:len(m.args)-len(flags)]
	m.start()
	if out := sh(t, "getfattr", "--absolute-names", "--only-values", "-n", "trusted.libvirt.security.dac", m.path("renamed")); out != "+0:+0" {
		t.Errorf("trusted xattr after mv and remount: %q", out)
	}
	if out := sh(t, "getfattr", "--absolute-names", "-d", "-m", "-", m.path("renamed")); !strings.Contains(out, "trusted.libvirt.security.dac") || !strings.Contains(out, "user.k") {
		t.Errorf("listing after mv and remount:\n%s", out)
	}
	if st := statT(t, m.path("renamed")); st.Uid != 64055 || st.Gid != 107 {
		t.Errorf("a file created under --uid/--gid lost its owner at remount: %d:%d", st.Uid, st.Gid)
	}
	if st := statT(t, m.path("ext")); st.Uid != 0 || st.Mode&07777 != 0o600 {
		t.Errorf("untagged LV without the flags: %d:%d mode %o, want root 0600", st.Uid, st.Gid, st.Mode&07777)
	}
}

// A libvirt dir pool on a --vg mount creates, lists, fills, reads and
// deletes volumes, which are LVs.
func TestLibvirtDirPool(t *testing.T) {
	e := newVG(t)
	m := e.mount()
	l := testutil.StartLibvirtd(t, e.base) // after the mount: its namespace copies the mounts
	l.Virsh("pool-define-as", "volfs", "dir", "--target", m.dir)
	l.Virsh("pool-start", "volfs")
	l.Virsh("vol-create-as", "volfs", "web", "8M", "--format", "raw")
	if lv := e.lv("web"); lv.Size < 8*mib {
		t.Errorf("vol-create-as made an LV of %d bytes, want 8 MiB", lv.Size)
	}
	if st := statT(t, m.path("web")); st.Size != 8*mib {
		t.Errorf("the new volume's file is %d bytes, want 8 MiB", st.Size)
	}
	if out := l.Virsh("vol-list", "--pool", "volfs"); !strings.Contains(out, m.path("web")) {
		t.Errorf("vol-list does not show web:\n%s", out)
	}
	src := e.file("src", 3*mib+512, 3)
	l.Virsh("vol-upload", "--pool", "volfs", "web", src)
	want, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(e.base, "back")
	l.Virsh("vol-download", "--pool", "volfs", "web", back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 8*mib || !bytes.Equal(got[:len(want)], want) {
		t.Errorf("vol-download gave %d bytes, not what vol-upload sent", len(got))
	}
	l.Virsh("vol-delete", "--pool", "volfs", "web")
	if lvs, _ := e.lvs(); len(lvs) != 0 {
		t.Errorf("LVs left after vol-delete: %v", names(lvs))
	}
	l.Virsh("pool-destroy", "volfs")
	l.Virsh("pool-undefine", "volfs")
}

// A VM whose disk is a file over an LV starts with libvirt's dynamic
// ownership: the owner libvirt remembers goes into the LV's tags while the
// VM runs and is gone after destroy; QEMU's writes are on the LV. One
// change from the defaults: no private mount namespace per QEMU, which the
// guest cannot build (it has no udev: "Failed to open /dev/null for OFD
// lock probing"); the host test runs with the defaults.
func TestLibvirtDomainOnLV(t *testing.T) {
	testutil.Need(t, "qemu-system-x86_64")
	e := newVG(t)
	// QEMU runs as libvirt-qemu: it must reach the mount point.
	for _, d := range []string{tmpRoot, e.base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sh(t, "lvcreate", "-q", "-Zy", "-Wy", "-L", "16m", "-n", "vm", e.vg)
	m := e.mount()
	p := m.path("vm")
	sh(t, "chown", "123:456", p)
	l := testutil.StartLibvirtd(t, e.base, "namespaces = [ ]")
	emulator, _ := exec.LookPath("qemu-system-x86_64")
	xml := filepath.Join(e.base, "domain.xml")
	if err := os.WriteFile(xml, testutil.DomainXML("volfs-vm", emulator, p), 0o644); err != nil {
		t.Fatal(err)
	}
	l.Virsh("create", xml)
	if out := sh(t, "getfattr", "--absolute-names", "--only-values", "-n", "trusted.libvirt.security.dac", p); out != "+123:+456" {
		t.Errorf("remembered owner: %q, want +123:+456", out)
	}
	if st := statT(t, p); st.Uid == 123 {
		t.Errorf("libvirt did not give the image to QEMU's user")
	}
	if n := xattrTags(e.lv("vm")); n < 3 {
		t.Errorf("%d xattr tags on the LV while the VM runs, want libvirt's 3", n)
	}
	l.Virsh("qemu-monitor-command", "volfs-vm", "--hmp", fmt.Sprintf(`qemu-io -d %s "write -P 0x5a 1048576 65536"`, testutil.VdaQOM))
	l.Virsh("qemu-monitor-command", "volfs-vm", "--hmp", fmt.Sprintf(`qemu-io -d %s "flush"`, testutil.VdaQOM))
	f, err := os.Open("/dev/" + e.vg + "/vm")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 65536)
	_, err = f.ReadAt(got, 1<<20)
	f.Close()
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 65536)) {
		t.Error("the LV does not hold what QEMU wrote through the file")
	}
	l.Virsh("destroy", "volfs-vm")
	if st := statT(t, p); st.Uid != 123 || st.Gid != 456 {
		t.Errorf("after destroy the image is %d:%d, want 123:456", st.Uid, st.Gid)
	}
	e.waitLV("vm", "no xattr tags after destroy", func(l lv) bool { return xattrTags(l) == 0 })
}

func xattrTags(l lv) int {
	n := 0
	for _, t := range l.Tags {
		if strings.HasPrefix(t, "volfs.x=") {
			n++
		}
	}
	return n
}
