package lvm

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/volfs/volfs/internal/mountinfo"
)

// Which block devices lvm may scan.
//
// Until discoverPVs has limited every command to the VG's PVs, and again
// whenever it looks for PVs the VG gained (rediscoverPVs, while a request
// waits for the listing), lvm scans block devices: it opens each one and
// reads its label. A loop device whose backing file is on a FUSE mount
// (an image of this very mount attached with losetup, or of another volfs
// mount) is served by a FUSE server; if that server is this process, the
// scan's read waits for a request that may itself be waiting for the scan
// (a loop device's flush asks volfs to persist the mtime with lvchange):
// a deadlock, and an uninterruptible one, since the read waits in the
// block layer. So the scans are given an explicit --devices list: every
// block device except those whose I/O may reach a FUSE server (loop
// devices over files on FUSE mounts, their partitions, devices stacked on
// them, and loop devices over files on file systems mounted from any of
// those). Only /sys and /proc/self/mountinfo are read to decide: nothing
// here opens a device or touches a FUSE mount.

// Where lvm uses a devices file, its scans are limited to the devices
// listed there already, and no list is given (it would override the file);
// a loop device over a file of a FUSE mount must then not be added to it.

// scanLimit returns the --devices list for lvm's scans (nil: none, lvm's
// devices file limits them) and the devices left out.
func (d *Driver) scanLimit(ctx context.Context) (devs, skipped []string) {
	if d.lvm.devicesFileInUse(ctx) {
		return nil, nil
	}
	return scanDevices()
}

// scanDevices returns the block devices lvm may scan (as /dev paths,
// sorted) and those it must not.
func scanDevices() (devs, skipped []string) {
	mounts, _ := mountinfo.All()
	return pickScanDevices("/sys/class/block", "/dev", mounts)
}

// pickScanDevices is scanDevices over the given sysfs block class
// directory, device directory and mounts.
func pickScanDevices(sysBlock, devDir string, mounts []mountinfo.Mount) (devs, skipped []string) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, nil
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	bad := map[string]bool{}
	for changed := true; changed; {
		changed = false
		for _, name := range names {
			if !bad[name] && unsafeToScan(filepath.Join(sysBlock, name), bad, mounts) {
				bad[name], changed = true, true
			}
		}
	}
	for _, name := range names {
		// /sys names a device like cciss!c0d0 for /dev/cciss/c0d0.
		dev := filepath.Join(devDir, strings.ReplaceAll(name, "!", "/"))
		if bad[name] {
			skipped = append(skipped, dev)
			continue
		}
		if _, err := os.Stat(dev); err == nil {
			devs = append(devs, dev)
		}
	}
	slices.Sort(devs)
	slices.Sort(skipped)
	return devs, skipped
}

// unsafeToScan reports whether reading the device at sys (its /sys/class/block
// entry) may need a FUSE server, given the devices already known to (bad).
func unsafeToScan(sys string, bad map[string]bool, mounts []mountinfo.Mount) bool {
	if b, err := os.ReadFile(filepath.Join(sys, "loop", "backing_file")); err == nil {
		file := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if m, ok := mountOf(file, mounts); ok {
			if strings.HasPrefix(m.FSType, "fuse") || bad[filepath.Base(m.Source)] {
				return true
			}
		}
	}
	// A partition: its parent is the directory above it in /sys/devices.
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		if real, err := filepath.EvalSymlinks(sys); err == nil && bad[filepath.Base(filepath.Dir(real))] {
			return true
		}
	}
	// Stacked (device-mapper, md): any device below it.
	below, _ := os.ReadDir(filepath.Join(sys, "slaves"))
	for _, s := range below {
		if bad[s.Name()] {
			return true
		}
	}
	return false
}

// mountOf returns the mount that holds path: the one at the longest
// directory that contains it (the last one listed at that directory).
func mountOf(path string, mounts []mountinfo.Mount) (mountinfo.Mount, bool) {
	var found mountinfo.Mount
	best := -1
	for _, m := range mounts {
		if !within(path, m.Dir) || len(m.Dir) < best {
			continue
		}
		found, best = m, len(m.Dir)
	}
	return found, best >= 0
}

func within(path, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(path, "/")
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}
