// Package holders finds what keeps a block device open: processes with an
// fd on it, mounts, devices stacked on it, loop devices backed by it.
//
// It is the scan volmap/lvm does in findHolders, as a package of its own so
// that drivers share one copy (volmap/loopdir uses it; lvm can switch to it).
package holders

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/mountinfo"
)

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

	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) > 4 && fields[2] == majmin {
				who = append(who, "mounted at "+mountinfo.Unescape(fields[4]))
			}
		}
		f.Close()
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

	me := strconv.Itoa(os.Getpid())
	procs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, fdDir := range procs {
		pidDir := filepath.Dir(fdDir)
		pid := filepath.Base(pidDir)
		if pid == me && !self {
			continue
		}
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			// Only device nodes under /dev are stat'ed: a stat elsewhere
			// could hang on a dead network filesystem.
			if err != nil || !strings.HasPrefix(target, "/dev/") {
				continue
			}
			var fst unix.Stat_t
			if unix.Stat(target, &fst) != nil || fst.Mode&unix.S_IFMT != unix.S_IFBLK || fst.Rdev != rdev {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join(pidDir, "comm"))
			desc := fmt.Sprintf("held by pid %s (%s)", pid, strings.TrimSpace(string(comm)))
			if pid == me {
				desc += " (this process)"
			}
			who = append(who, desc)
			break
		}
	}
	return who, nil
}
