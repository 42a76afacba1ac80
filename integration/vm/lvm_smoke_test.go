package vm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// These tests prove that the guest set up by vmrun.sh gives tests what volfs
// needs: device-mapper with linear, thin and thin-snapshot LVs driven by the
// real lvm2 tools, FUSE and loop devices. On the host they skip.

const smokeVG = "volfs_smoke"

func requireGuest(t *testing.T) {
	t.Helper()
	if !InGuest() {
		t.Skipf("needs the volfs QEMU guest (%s=1 and %q on the kernel command line); "+
			`run: go test -exec "$PWD/integration/vm/vmrun.sh -D 4G --" ./integration/vm/`, EnvVar, CmdlineMarker)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	start := time.Now()
	out, err := exec.Command(name, args...).CombinedOutput()
	t.Logf("%s %s (%v)", name, strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// alignedBuf returns an n-byte, page-aligned buffer usable with O_DIRECT.
func alignedBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Munmap(b) })
	return b
}

func fillPattern(b []byte, seed byte) {
	for i := range b {
		b[i] = seed ^ byte(i>>9) ^ byte(i)
	}
}

// directWrite and directRead bypass the page cache, so what is read back
// really went through device-mapper to the disk.
func directWrite(t *testing.T, dev string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("write %s: %v", dev, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", dev, err)
	}
}

func directRead(t *testing.T, dev string, off int64, buf []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
}

func expectData(t *testing.T, dev string, off int64, want []byte) {
	t.Helper()
	got := alignedBuf(t, len(want))
	directRead(t, dev, off, got)
	if !bytes.Equal(got, want) {
		t.Fatalf("%s at %d: data differs from what was written", dev, off)
	}
}

type lvRow struct {
	Name    string `json:"lv_name"`
	Attr    string `json:"lv_attr"`
	Size    string `json:"lv_size"`
	SegType string `json:"segtype"`
	Pool    string `json:"pool_lv"`
	Origin  string `json:"origin"`
	Active  string `json:"lv_active"`
}

func listLVs(t *testing.T) map[string]lvRow {
	t.Helper()
	out := run(t, "lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "lv_name,lv_attr,lv_size,segtype,pool_lv,origin,lv_active", smokeVG)
	var rep struct {
		Report []struct {
			LV []lvRow `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("lvs json: %v\n%s", err, out)
	}
	if len(rep.Report) != 1 {
		t.Fatalf("lvs json: %d reports, want 1\n%s", len(rep.Report), out)
	}
	m := map[string]lvRow{}
	for _, lv := range rep.Report[0].LV {
		m[lv.Name] = lv
	}
	return m
}

func TestLVMSmoke(t *testing.T) {
	disk := RequireScratchDisks(t, 1)[0]
	t0 := time.Now()

	run(t, "pvcreate", "-y", disk)
	t.Cleanup(func() {
		// After a failure: remove whatever is left (the test removes
		// everything itself when it succeeds).
		for _, c := range [][]string{
			{"vgs", smokeVG, "vgremove", "-ff", "-y", smokeVG},
			{"pvs", disk, "pvremove", "-ff", "-y", disk},
		} {
			if exec.Command(c[0], c[1]).Run() != nil {
				continue // already gone
			}
			if out, err := exec.Command(c[2], c[3:]...).CombinedOutput(); err != nil {
				t.Errorf("cleanup %v: %v\n%s", c[2:], err, out)
			}
		}
	})
	run(t, "vgcreate", smokeVG, disk)
	run(t, "lvcreate", "-y", "-L", "64m", "-n", "lin", smokeVG)
	run(t, "lvcreate", "-y", "--type", "thin-pool", "-L", "256m", "-n", "pool", smokeVG)
	run(t, "lvcreate", "-y", "-V", "1g", "--thinpool", "pool", "-n", "thin", smokeVG)

	lin := "/dev/" + smokeVG + "/lin"
	thin := "/dev/" + smokeVG + "/thin"
	snap := "/dev/" + smokeVG + "/snap"
	const mib = 1 << 20

	// Linear LV: write and read back 1 MiB at 0 and at the last MiB.
	a := alignedBuf(t, mib)
	fillPattern(a, 0xa5)
	directWrite(t, lin, 0, a)
	directWrite(t, lin, 63*mib, a)
	expectData(t, lin, 0, a)
	expectData(t, lin, 63*mib, a)

	// Thin LV, then a thin snapshot of it, then overwrite the origin: the
	// snapshot must keep the old data.
	b := alignedBuf(t, mib)
	fillPattern(b, 0x3c)
	directWrite(t, thin, 0, a)
	directWrite(t, thin, 900*mib, a) // sparse: beyond the pool's 256 MiB
	run(t, "lvcreate", "-y", "-s", "-n", "snap", smokeVG+"/thin")
	lvs := listLVs(t)
	if s := lvs["snap"]; len(s.Attr) < 10 || s.Attr[4] == 'a' || s.Attr[9] != 'k' {
		t.Errorf("new thin snapshot attr %q: want inactive with the activation-skip flag 'k'", s.Attr)
	}
	directWrite(t, thin, 0, b)
	run(t, "lvchange", "-ay", "-K", smokeVG+"/snap")
	expectData(t, snap, 0, a)
	expectData(t, snap, 900*mib, a)
	expectData(t, thin, 0, b)
	expectData(t, thin, 900*mib, a)

	lvs = listLVs(t)
	want := map[string]lvRow{
		"lin":  {SegType: "linear", Size: fmt.Sprint(64 * mib)},
		"pool": {SegType: "thin-pool", Size: fmt.Sprint(256 * mib)},
		"thin": {SegType: "thin", Size: fmt.Sprint(1024 * mib), Pool: "pool"},
		"snap": {SegType: "thin", Size: fmt.Sprint(1024 * mib), Pool: "pool", Origin: "thin"},
	}
	for name, w := range want {
		g, ok := lvs[name]
		if !ok {
			t.Errorf("lvs: no LV %q in %v", name, lvs)
			continue
		}
		if g.SegType != w.SegType || g.Size != w.Size || g.Pool != w.Pool || g.Origin != w.Origin {
			t.Errorf("lvs %s = %+v, want segtype %s size %s pool %q origin %q", name, g, w.SegType, w.Size, w.Pool, w.Origin)
		}
		if g.Active != "active" {
			t.Errorf("lvs %s: lv_active %q, want active", name, g.Active)
		}
		// libdevmapper (no udev) must have made the /dev/VG/LV link.
		if _, err := os.Stat("/dev/" + smokeVG + "/" + name); err != nil && name != "pool" {
			t.Errorf("device node: %v", err)
		}
	}

	for _, lv := range []string{"snap", "thin", "pool", "lin"} {
		run(t, "lvremove", "-y", smokeVG+"/"+lv)
	}
	run(t, "vgremove", "-y", smokeVG)
	run(t, "pvremove", "-y", disk)
	if out := run(t, "dmsetup", "ls"); strings.Contains(out, smokeVG) {
		t.Errorf("device-mapper devices left behind:\n%s", out)
	}
	if _, err := os.Stat("/dev/" + smokeVG); err == nil {
		t.Errorf("/dev/%s still exists", smokeVG)
	}
	t.Logf("LVM smoke test took %v", time.Since(t0).Round(time.Millisecond))
}

// TestGuestDevices checks /dev/mapper/control, /dev/fuse (by mounting a raw
// FUSE file system and receiving the kernel's INIT request) and loop
// devices.
func TestGuestDevices(t *testing.T) {
	requireGuest(t)

	t.Run("mapper", func(t *testing.T) {
		st, err := os.Stat("/dev/mapper/control")
		if err != nil || st.Mode()&os.ModeCharDevice == 0 {
			t.Fatalf("/dev/mapper/control: %v, mode %v", err, st)
		}
		out := run(t, "dmsetup", "version")
		if !strings.Contains(out, "Driver version") {
			t.Fatalf("dmsetup version: %s", out)
		}
	})

	t.Run("fuse", func(t *testing.T) {
		// Raw fd: os.File.Fd() would switch the fd back to blocking mode.
		fd, err := syscall.Open("/dev/fuse", syscall.O_RDWR|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("open /dev/fuse: %v", err)
		}
		closed := false
		closeFd := func() {
			if !closed {
				closed = true
				_ = syscall.Close(fd)
			}
		}
		defer closeFd()
		mnt := t.TempDir()
		opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", fd)
		if err := syscall.Mount("volfs-smoke", mnt, "fuse.volfs-smoke", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
			t.Fatalf("mount fuse: %v", err)
		}
		defer func() {
			if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount: %v", err)
			}
		}()
		// struct fuse_in_header: len u32, opcode u32, unique u64, ...
		buf := make([]byte, 1<<17)
		deadline := time.Now().Add(10 * time.Second)
		for {
			n, err := syscall.Read(fd, buf)
			if err == syscall.EAGAIN && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if err != nil {
				t.Fatalf("read /dev/fuse: %v", err)
			}
			if n < 40 {
				t.Fatalf("short FUSE request: %d bytes", n)
			}
			const fuseInit = 26
			if op := *(*uint32)(unsafe.Pointer(&buf[4])); op != fuseInit {
				t.Fatalf("first FUSE request has opcode %d, want FUSE_INIT (%d)", op, fuseInit)
			}
			break
		}
		// Closing the device aborts the connection: the mount then answers
		// ENOTCONN, which proves it was a FUSE mount served through our fd.
		closeFd()
		if _, err := os.Stat(filepath.Join(mnt, "x")); err == nil || !strings.Contains(err.Error(), "not connected") {
			t.Errorf("stat in aborted FUSE mount: %v, want ENOTCONN", err)
		}
	})

	t.Run("loop", func(t *testing.T) {
		img := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", img))
		defer run(t, "losetup", "-d", dev)
		if !strings.HasPrefix(dev, "/dev/loop") {
			t.Fatalf("losetup gave %q", dev)
		}
		if out := run(t, "blockdev", "--getsize64", dev); strings.TrimSpace(out) != "1048576" {
			t.Fatalf("loop size %s", out)
		}
	})
}
