package lvm

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/mountinfo"
	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// checkVGName applies LVM's VG name rules (the LV charset, no leading '-',
// not "." or "..").
func checkVGName(vg string) error {
	switch {
	case vg == "":
		return fmt.Errorf("%w: no volume group given", volmap.ErrInvalidName)
	case len(vg) > volmap.MaxLVName:
		return fmt.Errorf("%w: volume group name %q is longer than %d characters", volmap.ErrNameTooLong, vg, volmap.MaxLVName)
	case vg == "." || vg == ".." || vg[0] == '-':
		return fmt.Errorf("%w: %q is not a valid volume group name", volmap.ErrInvalidName, vg)
	}
	for i := 0; i < len(vg); i++ {
		c := vg[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+_.-", c) >= 0) {
			return fmt.Errorf("%w: volume group name %q contains %q", volmap.ErrInvalidName, vg, c)
		}
	}
	return nil
}

// checkTag applies LVM's tag rules ([A-Za-z0-9_+.-/=!:#&], at most 1024
// characters) and keeps the mount tag out of volfs's attribute namespace.
func checkTag(tag string) error {
	if len(tag) > meta.MaxTagLen {
		return fmt.Errorf("%w: tag %q is longer than %d characters", volmap.ErrInvalidName, tag, meta.MaxTagLen)
	}
	for i := 0; i < len(tag); i++ {
		c := tag[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_+.-/=!:#&", c) >= 0) {
			return fmt.Errorf("%w: tag %q contains %q; LVM allows [A-Za-z0-9_+.-/=!:#&]", volmap.ErrInvalidName, tag, c)
		}
	}
	if meta.IsTag(tag) {
		return fmt.Errorf("%w: tag %q starts with %q, which volfs uses for file attributes", volmap.ErrInvalidName, tag, meta.TagPrefix)
	}
	return nil
}

// devPath is the device node of an LV of the VG.
func (d *Driver) devPath(lvName string) string {
	return "/dev/mapper/" + volmap.DMName(d.cfg.VG, lvName)
}

// dmUUID is the device-mapper UUID LVM gives an LV's top-level device.
func (d *Driver) dmUUID(lv LV) string {
	return "LVM-" + strings.ReplaceAll(d.vgUUID, "-", "") + strings.ReplaceAll(lv.UUID, "-", "")
}

// openDevice opens the LV's device node and checks that it is the LV: a
// block device whose device-mapper UUID is the LV's (a node in /dev/mapper
// could be stale, or a symlink somebody planted).
func (d *Driver) openDevice(lv LV, flag int) (*os.File, error) {
	path := d.devPath(lv.Name)
	f, err := os.OpenFile(path, flag&^(os.O_CREATE|os.O_EXCL|os.O_TRUNC), 0)
	if err != nil {
		return nil, fmt.Errorf("open %s/%s: %w", d.cfg.VG, lv.Name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s/%s: fstat %s: %w", d.cfg.VG, lv.Name, path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		f.Close()
		return nil, fmt.Errorf("open %s/%s: %s is not a block device", d.cfg.VG, lv.Name, path)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d/dm/uuid", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	got, err := os.ReadFile(sys)
	if want := d.dmUUID(lv); err != nil || strings.TrimSpace(string(got)) != want {
		f.Close()
		return nil, fmt.Errorf("open %s/%s: %s is not this LV (%s says %q, want %q, %v)",
			d.cfg.VG, lv.Name, path, sys, strings.TrimSpace(string(got)), want, err)
	}
	return f, nil
}

// holders describes what keeps the block device dev open: processes with
// an fd on it, mounts, device-mapper or md devices stacked on it, loop
// devices backed by it. Best effort: it says so when it finds nothing.
func holders(dev string) string {
	who, err := findHolders(dev, true)
	if err != nil {
		return fmt.Sprintf("cannot tell who holds it (%v)", err)
	}
	if len(who) == 0 {
		return "no process, mount or stacked device found holding " + dev
	}
	return strings.Join(who, "; ")
}

// otherHolders lists what holds dev open apart from this process (nothing
// when dev cannot be examined).
func otherHolders(dev string) []string {
	who, _ := findHolders(dev, false)
	return who
}

func findHolders(dev string, self bool) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil, err
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
		// Only backing paths under /dev can be dev (losetup resolves
		// symlinks); a stat elsewhere could hang on a dead FUSE mount.
		var lst unix.Stat_t
		if err == nil && strings.HasPrefix(backing, "/dev/") && unix.Stat(backing, &lst) == nil &&
			lst.Mode&unix.S_IFMT == unix.S_IFBLK && lst.Rdev == rdev {
			who = append(who, "backs loop device "+filepath.Base(filepath.Dir(filepath.Dir(bf))))
		}
	}

	procs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, fdDir := range procs {
		pidDir := filepath.Dir(fdDir)
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
			pid := filepath.Base(pidDir)
			desc := fmt.Sprintf("pid %s (%s)", pid, strings.TrimSpace(string(comm)))
			if pid == strconv.Itoa(os.Getpid()) {
				if !self {
					break
				}
				desc += " (this process)"
			}
			who = append(who, "held by "+desc)
			break
		}
	}
	return who, nil
}
