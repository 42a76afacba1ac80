package lvm

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/holders"
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
	got, err := dmUUIDOf(st.Rdev)
	if want := d.dmUUID(lv); err != nil || got != want {
		f.Close()
		return nil, fmt.Errorf("open %s/%s: %s is not this LV (%sdm/uuid says %q, want %q, %v)",
			d.cfg.VG, lv.Name, path, sysBlock(st.Rdev), got, want, err)
	}
	return f, nil
}

// sysBlock is the sysfs directory of the block device rdev.
func sysBlock(rdev uint64) string {
	return fmt.Sprintf("/sys/dev/block/%d:%d/", unix.Major(rdev), unix.Minor(rdev))
}

// dmUUIDOf is the device-mapper UUID of the block device rdev (an error
// when it is no device-mapper device).
func dmUUIDOf(rdev uint64) (string, error) {
	b, err := os.ReadFile(sysBlock(rdev) + "dm/uuid")
	return strings.TrimSpace(string(b)), err
}

// blockDevAt is the device number of the block device node at path (false
// when there is none).
func blockDevAt(path string) (uint64, bool) {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, false
	}
	return st.Rdev, true
}

// describeHolders describes what keeps the block device dev open: processes with
// an fd on it, mounts, device-mapper or md devices stacked on it, loop
// devices backed by it. Best effort: it says so when it finds nothing.
func describeHolders(dev string) string {
	who, err := holders.Find(dev, true)
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
	who, _ := holders.Find(dev, false)
	return who
}
