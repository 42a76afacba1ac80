package lvm

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/testutil"
)

// stampLVM runs a real lvm command limited to dev, with no backups or
// archives written to the host's /etc/lvm (no device-mapper is needed:
// these commands only write metadata).
func stampLVM(t *testing.T, dev string, args ...string) {
	t.Helper()
	a := append([]string{args[0], "--devices", dev, "--config", "backup { backup = 0 archive = 0 }"}, args[1:]...)
	cmd := exec.Command("lvm", a...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("lvm %s: %v\n%s", strings.Join(a, " "), err, out)
	}
}

// TestPVStamp reads the metadata area headers of real PVs (made by
// pvcreate and vgcreate on loop devices): the stamp stays the same across
// reading commands and changes with every commit, on a PV with one
// metadata area and on one with two.
func TestPVStamp(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.Need(t, "lvm")
	for _, copies := range []string{"1", "2"} {
		t.Run("metadatacopies="+copies, func(t *testing.T) {
			dev := testutil.NewLoop(t, 64<<20)
			vg := fmt.Sprintf("volfsstamp%d", os.Getpid())
			stampLVM(t, dev, "pvcreate", "-q", "--pvmetadatacopies", copies, dev)
			stampLVM(t, dev, "vgcreate", "-q", vg, dev)
			t.Cleanup(func() { stampLVM(t, dev, "vgremove", "-q", "-ff", vg) })
			s0, err := pvsStamp([]string{dev})
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(s0, "@"); fmt.Sprint(n) != copies {
				t.Fatalf("stamp %q has %d metadata areas, want %s", s0, n, copies)
			}
			stampLVM(t, dev, "vgs", vg)
			stampLVM(t, dev, "lvs", vg)
			if s, err := pvsStamp([]string{dev}); err != nil || s != s0 {
				t.Fatalf("stamp after vgs and lvs: %q, %v; want %q", s, err, s0)
			}
			seen := map[string]string{s0: "vgcreate"}
			for _, change := range [][]string{
				{"vgchange", "-q", "--addtag", "t1", vg},
				{"vgchange", "-q", "--deltag", "t1", vg},
				{"vgchange", "-q", "--addtag", "t1", vg}, // the same metadata text as two commits ago, but for its seqno
				{"vgchange", "-q", "--logicalvolume", "9", vg},
			} {
				stampLVM(t, dev, change...)
				s, err := pvsStamp([]string{dev})
				if err != nil {
					t.Fatal(err)
				}
				if before, ok := seen[s]; ok {
					t.Fatalf("the stamp after %v is the one after %s", change, before)
				}
				seen[s] = strings.Join(change, " ")
			}
		})
	}
}

// TestPVStampRefuses: a device that is no PV, a PV whose label or metadata
// area header is damaged, and a PV with no metadata area in use give no
// stamp (a change could not be ruled out).
func TestPVStampRefuses(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.Need(t, "lvm")
	dev := testutil.NewLoop(t, 64<<20)
	if _, err := pvsStamp([]string{dev}); err == nil {
		t.Fatal("a stamp of a device that is no PV")
	}
	if _, err := pvsStamp(nil); err == nil {
		t.Fatal("a stamp of no PVs")
	}
	stampLVM(t, dev, "pvcreate", "-q", dev)
	if _, err := pvsStamp([]string{dev}); err == nil {
		t.Fatal("a stamp of a PV in no VG (its metadata area holds no metadata)")
	}
	vg := fmt.Sprintf("volfsstamp%d", os.Getpid())
	stampLVM(t, dev, "vgcreate", "-q", vg, dev)
	if _, err := pvsStamp([]string{dev}); err != nil {
		t.Fatal(err)
	}
	flip := func(off int64) {
		t.Helper()
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x40
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	flip(512 + 100) // in the label's pv_header
	if _, err := pvsStamp([]string{dev}); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("a damaged label: %v", err)
	}
	flip(512 + 100)
	flip(4096 + 60) // in the metadata area header's locations
	if _, err := pvsStamp([]string{dev}); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("a damaged metadata area header: %v", err)
	}
	flip(4096 + 60)
	if _, err := pvsStamp([]string{dev}); err != nil {
		t.Fatal(err)
	}
	stampLVM(t, dev, "vgremove", "-q", "-ff", vg)
	stampLVM(t, dev, "pvcreate", "-q", "-ff", "-y", "--pvmetadatacopies", "0", dev)
	if _, err := pvsStamp([]string{dev}); err == nil {
		t.Fatal("a stamp of a PV without metadata areas")
	}
}

// FuzzStamp feeds hostile labels, metadata area headers and
// device-mapper lists and statuses to the parsers.
func FuzzStamp(f *testing.F) {
	label := make([]byte, labelScanSectors*512)
	sec := label[512:1024]
	copy(sec, "LABELONE")
	binary.LittleEndian.PutUint64(sec[8:], 1)
	binary.LittleEndian.PutUint32(sec[20:], 32)
	copy(sec[24:], "LVM2 001")
	binary.LittleEndian.PutUint64(sec[72:], 1<<20) // a data area
	binary.LittleEndian.PutUint64(sec[104:], 4096) // a metadata area
	binary.LittleEndian.PutUint32(sec[16:], lvmCRC(sec[20:]))
	f.Add(label)
	f.Add(make([]byte, 512))
	f.Fuzz(func(t *testing.T, b []byte) {
		if mdas, err := mdaOffsets(b); err == nil && len(mdas) > 32 {
			t.Fatalf("%d metadata areas", len(mdas))
		}
		if loc, _, err := mdaHeader(b); err == nil && len(loc) > 512 {
			t.Fatalf("locations of %d bytes", len(loc))
		}
		for start := range min(len(b), 64) {
			_, _ = parseDMNames(b, start)
			_, _ = parseDMStatus(b, start, len(b)%5)
		}
	})
}
