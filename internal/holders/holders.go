// Package holders finds what keeps a block device open: processes with an
// fd on it, mounts, devices stacked on it, loop devices backed by it.
//
// Every driver uses this one copy (volmap/lvm, volmap/loopdir). The scan
// of processes goes through internal/procfs, which is bounded in time: a
// process wedged in the kernel (in a FUSE request of a stopped server, say)
// is given up on after procfs.Patience, the whole scan after ProcTimeout,
// and the answer then says it may be incomplete.
package holders

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/mountinfo"
	"github.com/volfs/volfs/internal/procfs"
)

// ProcTimeout bounds the whole scan of /proc. It is only reached on a
// machine so loaded that examining every process takes that long, or with
// many wedged processes: each of those costs at most procfs.Patience.
var ProcTimeout = 10 * time.Second

// selfHolds reports whether this process has dev (by device number) open.
func selfHolds(rdev uint64) bool {
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		t, err := os.Readlink("/proc/self/fd/" + fd.Name())
		var st unix.Stat_t
		if err == nil && strings.HasPrefix(t, "/dev/") && unix.Stat(t, &st) == nil &&
			st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == rdev {
			return true
		}
	}
	return false
}

// Find lists what holds the block device dev, one description each
// ("held by pid 42 (qemu-system-x86)", "mounted at /mnt", ...). With self
// false, this process's own fds do not count. Best effort: entries of
// /proc and /sys that vanish while it reads are skipped.
func Find(dev string, self bool) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dev, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, fmt.Errorf("%s is not a block device", dev)
	}
	rdev := st.Rdev
	majmin := fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev))
	var who []string

	if ents, err := os.ReadDir("/sys/dev/block/" + majmin + "/holders"); err == nil {
		for _, e := range ents {
			if name, err := os.ReadFile("/sys/block/" + e.Name() + "/dm/name"); err == nil {
				who = append(who, fmt.Sprintf("device %s (%s) is stacked on it", e.Name(), strings.TrimSpace(string(name))))
			} else {
				who = append(who, fmt.Sprintf("device %s is stacked on it", e.Name()))
			}
		}
	}

	mounts, _ := mountinfo.All()
	// File systems mounted below /dev (/dev/shm, /dev/pts, /dev/mqueue)
	// hold no block device of ours, and a user may mount a FUSE file
	// system of theirs in /dev/shm whose server never answers a stat.
	var belowDev []string
	for _, m := range mounts {
		if fmt.Sprintf("%d:%d", m.Major, m.Minor) == majmin {
			who = append(who, "mounted at "+m.Dir)
		}
		if strings.HasPrefix(m.Dir, "/dev/") {
			belowDev = append(belowDev, m.Dir+"/")
		}
	}

	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, bf := range loops {
		b, err := os.ReadFile(bf)
		backing := strings.TrimSpace(string(b))
		// A loop device over dev has a backing path under /dev (losetup
		// resolves symlinks). Any other backing file is not stat'ed: it
		// may live on a FUSE mount whose server hangs (an image of a
		// volfs mount attached with losetup), and the stat with it.
		var lst unix.Stat_t
		if err == nil && strings.HasPrefix(backing, "/dev/") && unix.Stat(backing, &lst) == nil &&
			lst.Mode&unix.S_IFMT == unix.S_IFBLK && lst.Rdev == rdev {
			who = append(who, "backs loop device "+filepath.Base(filepath.Dir(filepath.Dir(bf))))
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), ProcTimeout)
	defer cancel()
	open, complete := procfs.FilesUnder(ctx, "/dev")
	paths := make([]string, 0, len(open))
	for rel := range open {
		paths = append(paths, rel)
	}
	sort.Strings(paths)
	seen := map[int]bool{}
	for _, rel := range paths {
		// Only device nodes under /dev are stat'ed: a stat elsewhere
		// could hang on a dead network or FUSE file system.
		p := "/dev/" + rel
		if slices.ContainsFunc(belowDev, func(dir string) bool { return strings.HasPrefix(p, dir) }) {
			continue
		}
		var fst unix.Stat_t
		if unix.Stat(p, &fst) != nil || fst.Mode&unix.S_IFMT != unix.S_IFBLK || fst.Rdev != rdev {
			continue
		}
		for _, p := range open[rel] {
			if !seen[p.PID] {
				seen[p.PID] = true
				who = append(who, fmt.Sprintf("held by pid %d (%s)", p.PID, p.Command))
			}
		}
	}
	if self && !seen[os.Getpid()] && selfHolds(rdev) {
		who = append(who, fmt.Sprintf("held by pid %d (this process)", os.Getpid()))
	}
	if !complete {
		who = append(who, fmt.Sprintf("(the process list may be incomplete: some processes' /proc entries did not answer within %s; a process wedged in the kernel?)", procfs.Patience))
	}
	return who, nil
}
