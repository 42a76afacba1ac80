package vm

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestScratchIndex(t *testing.T) {
	cases := []struct {
		serial string
		idx    int
		ok     bool
	}{
		{"volfs-scratch0", 0, true},
		{"volfs-scratch1\n", 1, true},
		{"volfs-scratch12\x00\x00\x00\x00\x00\x00", 12, true},
		{"volfs-scratch", 0, false},
		{"volfs-scratch\n", 0, false},
		{"volfs-scratchX", 0, false},
		{"volfs-scratch1a", 0, false},
		{"volfs-scratch-1", 0, false},
		{"volfs-scratch99999", 0, false},
		{" volfs-scratch0", 0, false},
		{"xvolfs-scratch0", 0, false},
		{"VOLFS-SCRATCH0", 0, false},
		{"vmtest0", 0, false},
		{"overlayblk", 0, false},
		{"", 0, false},
	}
	for _, c := range cases {
		idx, ok := ScratchIndex(c.serial)
		if ok != c.ok || idx != c.idx {
			t.Errorf("ScratchIndex(%q) = %d, %v; want %d, %v", c.serial, idx, ok, c.idx, c.ok)
		}
		if IsScratchSerial(c.serial) != c.ok {
			t.Errorf("IsScratchSerial(%q) != %v", c.serial, c.ok)
		}
	}
}

// fakeSys builds sysfs/block/<name>/serial files; a "-" serial means the
// attribute is absent (as for disks without a serial).
func fakeSys(t *testing.T, serials map[string]string) (sysRoot, dev string) {
	t.Helper()
	root := t.TempDir()
	sysRoot = filepath.Join(root, "sys")
	dev = filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, serial := range serials {
		d := filepath.Join(sysRoot, "block", name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if serial != "-" {
			if err := os.WriteFile(filepath.Join(d, "serial"), []byte(serial), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dev, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return sysRoot, dev
}

func TestScratchDisksFakeSysfs(t *testing.T) {
	sys, dev := fakeSys(t, map[string]string{
		"vda":   "overlayblk\n",       // the host's own disk: never
		"vdb":   "volfs-scratch1\n",   // second scratch disk
		"vdc":   "volfs-scratch0",     // first scratch disk
		"vdd":   "-",                  // no serial
		"vde":   "volfs-scratchX",     // malformed
		"vdf":   "vmtest0",            // someone else's scratch disk
		"sda":   "volfs-scratch2",     // not a virtio disk
		"vdg1":  "volfs-scratch3",     // partition-like name
		"loop0": "volfs-scratch4",     // not a virtio disk
		"vdh":   " volfs-scratch5",    // leading space
		"dm-0":  "volfs-scratch6\x00", // device-mapper
	})
	got, err := scratchDisks(sys, dev)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dev, "vdc"), filepath.Join(dev, "vdb")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("scratchDisks = %v, want %v", got, want)
	}
}

func TestScratchDisksNone(t *testing.T) {
	sys, dev := fakeSys(t, map[string]string{"vda": "overlayblk\n", "vdb": "-"})
	got, err := scratchDisks(sys, dev)
	if err != nil || len(got) != 0 {
		t.Fatalf("scratchDisks = %v, %v; want none", got, err)
	}
	if _, err := scratchDisks(filepath.Join(t.TempDir(), "nosys"), dev); err == nil {
		t.Fatal("missing sysfs: want an error")
	}
}

func TestScratchDisksDuplicateSerial(t *testing.T) {
	sys, dev := fakeSys(t, map[string]string{"vda": "volfs-scratch0", "vdb": "volfs-scratch0"})
	if got, err := scratchDisks(sys, dev); err == nil {
		t.Fatalf("duplicate serials: got %v, want an error", got)
	}
}

func TestCheckScratchDisk(t *testing.T) {
	sys, dev := fakeSys(t, map[string]string{
		"vda": "overlayblk",
		"vdb": "volfs-scratch0\n",
		"vdc": "-",
		"sda": "volfs-scratch1",
	})
	byID := filepath.Join(dev, "disk", "by-id")
	if err := os.MkdirAll(byID, 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"scratch": "../../vdb", "host": "../../vda"} {
		if err := os.Symlink(target, filepath.Join(byID, link)); err != nil {
			t.Fatal(err)
		}
	}
	ok := []string{filepath.Join(dev, "vdb"), filepath.Join(byID, "scratch")}
	bad := []string{
		filepath.Join(dev, "vda"),
		filepath.Join(byID, "host"),
		filepath.Join(dev, "vdc"),
		filepath.Join(dev, "sda"),
		filepath.Join(dev, "vdb1"), // partition / missing
		filepath.Join(dev, "nonexistent"),
	}
	for _, d := range ok {
		if err := checkScratchDisk(sys, d, false); err != nil {
			t.Errorf("checkScratchDisk(%s) = %v, want nil", d, err)
		}
		// The fake devices are regular files, not block devices.
		if err := checkScratchDisk(sys, d, true); err == nil || !strings.Contains(err.Error(), "not a block device") {
			t.Errorf("checkScratchDisk(%s, block) = %v, want 'not a block device'", d, err)
		}
	}
	for _, d := range bad {
		if err := checkScratchDisk(sys, d, false); err == nil {
			t.Errorf("checkScratchDisk(%s) = nil, want refusal", d)
		}
	}
}

func TestInGuestMarker(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	guest := write("guest", "console=ttyS0 panic=-1 volfs.vm=1 volfs.ctl=/tmp/x\n")
	host := write("host", "BOOT_IMAGE=/vmlinuz root=/dev/vda ro\n")
	lookalike := write("lookalike", "xvolfs.vm=1 volfs.vm=10\n")
	for _, c := range []struct {
		env, path string
		want      bool
	}{
		{"1", guest, true},
		{"", guest, false},
		{"0", guest, false},
		{"1", host, false},
		{"1", lookalike, false},
		{"1", filepath.Join(dir, "missing"), false},
	} {
		if got := inGuest(c.env, c.path); got != c.want {
			t.Errorf("inGuest(%q, %s) = %v, want %v", c.env, filepath.Base(c.path), got, c.want)
		}
	}
}

// On the host, the real system must yield no scratch disk at all, whatever
// its own disks are called; in the guest, every listed disk must pass the
// full check.
func TestScratchDisksRealSystem(t *testing.T) {
	disks, err := ScratchDisks()
	if err != nil {
		t.Skipf("no readable %s/block: %v", sysfsRoot, err)
	}
	if !InGuest() {
		if len(disks) != 0 {
			t.Fatalf("outside the guest ScratchDisks() = %v, want none", disks)
		}
		return
	}
	for _, d := range disks {
		if err := CheckScratchDisk(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
	t.Logf("scratch disks: %v", disks)
}
