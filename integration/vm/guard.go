// Package vm holds the guards for tests that need real LVM, device-mapper or
// raw block devices. Such tests run only inside the throw-away QEMU guest
// started by vmrun.sh (see README.md):
//
//	go test -exec "$PWD/integration/vm/vmrun.sh -D 4G --" ./...
//
// The host's own disk is /dev/vda too, so a test must never pick a disk by
// name: RequireScratchDisks hands out only the disks that vmrun.sh created,
// recognised by their virtio serial "volfs-scratchN", and only when the
// test provably runs in the guest.
package vm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const (
	// EnvVar is set to "1" by vmrun.sh in the guest's environment.
	EnvVar = "VOLFS_VM"
	// CmdlineMarker is on the guest kernel's command line (vmrun.sh puts it
	// there); the host kernel never has it.
	CmdlineMarker = "volfs.vm=1"
	// ScratchSerialPrefix starts the virtio serial of every disk that
	// vmrun.sh attaches: "volfs-scratch0", "volfs-scratch1", ...
	ScratchSerialPrefix = "volfs-scratch"
)

// Paths of the running system; the unit tests point them at fake trees.
var (
	sysfsRoot   = "/sys"
	devRoot     = "/dev"
	procCmdline = "/proc/cmdline"
)

// InGuest reports whether the caller runs inside the volfs test guest: the
// environment has VOLFS_VM=1 and the kernel command line has the marker.
func InGuest() bool {
	return inGuest(os.Getenv(EnvVar), procCmdline)
}

func inGuest(env, cmdlinePath string) bool {
	if env != "1" {
		return false
	}
	b, err := os.ReadFile(cmdlinePath)
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(b)) {
		if f == CmdlineMarker {
			return true
		}
	}
	return false
}

// ScratchIndex parses a virtio serial as read from /sys/block/vdX/serial
// and returns N for "volfs-scratchN". Only the exact form (prefix followed
// by decimal digits, optionally padded by trailing NULs or white space as
// some kernels report it) is accepted.
func ScratchIndex(serial string) (int, bool) {
	s := strings.TrimRight(serial, "\x00 \t\r\n")
	rest, ok := strings.CutPrefix(s, ScratchSerialPrefix)
	if !ok || rest == "" || len(rest) > 4 {
		return 0, false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil
}

// IsScratchSerial reports whether serial names a vmrun.sh scratch disk.
func IsScratchSerial(serial string) bool {
	_, ok := ScratchIndex(serial)
	return ok
}

// isVirtioDiskName accepts whole virtio-blk disks: vda, vdb, ..., vdaa.
func isVirtioDiskName(name string) bool {
	rest, ok := strings.CutPrefix(name, "vd")
	if !ok || rest == "" {
		return false
	}
	for _, c := range rest {
		if c < 'a' || c > 'z' {
			return false
		}
	}
	return true
}

// ScratchDisks returns the /dev/vdX devices whose /sys/block/vdX/serial is a
// scratch serial, ordered by N of "volfs-scratchN", and nothing else. It
// does not check that the caller runs in the guest: use
// RequireScratchDisks in tests.
func ScratchDisks() ([]string, error) {
	return scratchDisks(sysfsRoot, devRoot)
}

func scratchDisks(sysRoot, dev string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(sysRoot, "block"))
	if err != nil {
		return nil, err
	}
	type disk struct {
		idx  int
		path string
	}
	var disks []disk
	seen := map[int]string{}
	for _, e := range ents {
		name := e.Name()
		if !isVirtioDiskName(name) {
			continue
		}
		serial, err := readSerial(sysRoot, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // no serial: never a scratch disk
		}
		if err != nil {
			return nil, err
		}
		idx, ok := ScratchIndex(serial)
		if !ok {
			continue
		}
		if other, dup := seen[idx]; dup {
			return nil, fmt.Errorf("serial %s%d on both %s and %s", ScratchSerialPrefix, idx, other, name)
		}
		seen[idx] = name
		disks = append(disks, disk{idx, filepath.Join(dev, name)})
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i].idx < disks[j].idx })
	out := make([]string, len(disks))
	for i, d := range disks {
		out[i] = d.path
	}
	return out, nil
}

func readSerial(sysRoot, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(sysRoot, "block", name, "serial"))
	return string(b), err
}

// CheckScratchDisk returns nil only if dev (after resolving symlinks) is a
// whole virtio disk whose serial is a scratch serial and a block device.
// Call it before touching any device path that did not come from
// RequireScratchDisks.
func CheckScratchDisk(dev string) error {
	return checkScratchDisk(sysfsRoot, dev, true)
}

func checkScratchDisk(sysRoot, dev string, wantBlockDev bool) error {
	resolved, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return err
	}
	name := filepath.Base(resolved)
	if !isVirtioDiskName(name) {
		return fmt.Errorf("%s (%s) is not a whole virtio disk", dev, resolved)
	}
	if wantBlockDev {
		st, err := os.Stat(resolved)
		if err != nil {
			return err
		}
		if st.Mode()&fs.ModeDevice == 0 || st.Mode()&fs.ModeCharDevice != 0 {
			return fmt.Errorf("%s is not a block device", resolved)
		}
	}
	serial, err := readSerial(sysRoot, name)
	if err != nil {
		return fmt.Errorf("%s: no readable serial: %w", dev, err)
	}
	if !IsScratchSerial(serial) {
		return fmt.Errorf("%s has serial %q, not %sN: not a scratch disk", dev,
			strings.TrimRight(serial, "\x00 \t\r\n"), ScratchSerialPrefix)
	}
	return nil
}

// RequireScratchDisks returns the first n scratch disks of the guest. It
// skips the test when not running in the volfs guest, fails it if the guest
// has fewer than n scratch disks, and refuses (fails) any disk whose serial
// is not a scratch serial.
func RequireScratchDisks(t testing.TB, n int) []string {
	t.Helper()
	if !InGuest() {
		t.Skipf("needs the volfs QEMU guest (%s=1 and %q on the kernel command line); "+
			`run: go test -exec "$PWD/integration/vm/vmrun.sh -D 4G --" ./...`, EnvVar, CmdlineMarker)
	}
	disks, err := ScratchDisks()
	if err != nil {
		t.Fatalf("listing scratch disks: %v", err)
	}
	if len(disks) < n {
		t.Fatalf("need %d scratch disk(s), the guest has %d %v: give vmrun.sh -D SIZE once per disk", n, len(disks), disks)
	}
	disks = disks[:n]
	for _, d := range disks {
		RequireScratchDisk(t, d)
	}
	return disks
}

// RequireScratchDisk fails the test unless it runs in the guest and dev is a
// scratch disk (see CheckScratchDisk).
func RequireScratchDisk(t testing.TB, dev string) {
	t.Helper()
	if !InGuest() {
		t.Fatalf("refusing %s: not in the volfs QEMU guest", dev)
	}
	if err := CheckScratchDisk(dev); err != nil {
		t.Fatalf("refusing %s: %v", dev, err)
	}
}
