package lvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"slices"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
)

// The VG's stamp: has anything changed since a listing was read?
//
// An lvs of a thousand LVs takes most of a second (longer in a slow
// guest), and a request that comes after the listing expired would wait
// for one. Most of the time nothing has changed. Every change LVM makes to
// a VG, by whichever tool or host, is committed by rewriting the header
// of each metadata area on the VG's PVs: it points at the new metadata
// text and holds its checksum. Activating or deactivating an LV commits
// nothing, but adds or removes a device-mapper device. The stamp is both:
// the headers of the metadata areas of the VG's PVs, read past the page
// cache (another host writes them on a shared VG), and this host's
// device-mapper devices (name and number). It costs a few reads and one
// ioctl, no lvm command.
//
// Some figures move without a commit: the data a thin pool holds (a thin
// file's st_blocks), a RAID LV's sync and health. The stamp holds the
// device-mapper status of the VG's thin pools and RAID LVs too (one ioctl
// each, no flush): a write that allocates in a pool, a discard that
// frees, a resync step or a failed leg changes it.
//
// A listing remembers the stamp taken just before its lvs started; when
// the stamp is the same later, no commit, no (de)activation and no such
// move happened in between, and the listing still says what an lvs would
// (cache.go renews it; a refresh runs behind for what the stamp cannot
// see: a thin file whose discard freed blocks a snapshot still shares).

// labelScanSectors is how many sectors at the start of a PV may hold its
// label (LVM's LABEL_SCAN_SECTORS).
const labelScanSectors = 4

// mdaMagic opens every metadata area header (LVM's FMTT_MAGIC).
var mdaMagic = []byte(" LVM2 x[5A%r0N*>")

// lvmCRC is LVM's checksum: CRC-32 (IEEE) from 0xf597a6cf, without the
// final inversion.
func lvmCRC(b []byte) uint32 {
	return ^crc32.Update(^uint32(0xf597a6cf), crc32.IEEETable, b)
}

// mdaOffsets returns the byte offsets of the metadata areas that the PV
// label in head (the PV's first labelScanSectors sectors) lists.
func mdaOffsets(head []byte) ([]uint64, error) {
	le := binary.LittleEndian
	for s := 0; s < labelScanSectors && (s+1)*512 <= len(head); s++ {
		sec := head[s*512 : (s+1)*512]
		if !bytes.Equal(sec[:8], []byte("LABELONE")) || le.Uint64(sec[8:]) != uint64(s) {
			continue
		}
		if lvmCRC(sec[20:]) != le.Uint32(sec[16:]) {
			return nil, fmt.Errorf("the PV label in sector %d has a bad checksum", s)
		}
		if !bytes.Equal(sec[24:32], []byte("LVM2 001")) {
			return nil, fmt.Errorf("the label in sector %d is not an LVM2 PV's", s)
		}
		// pv_header: the PV's UUID and size, then two lists of disk
		// areas (offset, size), each ended by a zero offset: data
		// areas, then metadata areas.
		off := le.Uint32(sec[20:])
		if off < 32 || off > 512-40 {
			return nil, fmt.Errorf("the PV label in sector %d has its header at %d", s, off)
		}
		areas := sec[off+40:]
		var mdas []uint64
		list := 0
		for i := 0; i+16 <= len(areas) && list < 2; i += 16 {
			o := le.Uint64(areas[i:])
			switch {
			case o == 0:
				list++
			case list == 1:
				mdas = append(mdas, o)
			}
		}
		if list < 2 {
			return nil, fmt.Errorf("the PV label in sector %d does not end its lists of areas", s)
		}
		return mdas, nil
	}
	return nil, errors.New("no LVM2 label in the first sectors")
}

// mdaHeader checks a metadata area header (its first 512 bytes) and
// returns what a commit changes in it: the locations, sizes and checksums
// of the committed (and precommitted) metadata. inUse is false when the
// area is ignored (pvchange --metadataignore): LVM writes no metadata
// there.
func mdaHeader(b []byte) (locations []byte, inUse bool, err error) {
	le := binary.LittleEndian
	if len(b) < 512 || !bytes.Equal(b[4:20], mdaMagic) {
		return nil, false, errors.New("no metadata area header")
	}
	if lvmCRC(b[4:512]) != le.Uint32(b) {
		return nil, false, errors.New("the metadata area header has a bad checksum")
	}
	// version (4), start (8), size (8), then raw_locn entries of 24 bytes:
	// offset, size, checksum, flags; the first is the committed metadata.
	const first = 40
	end := first
	for end+24 <= 512 && le.Uint64(b[end:]) != 0 {
		end += 24
	}
	const ignored = 1 // RAW_LOCN_IGNORED
	inUse = end > first && le.Uint32(b[first+20:])&ignored == 0
	return b[first:end], inUse, nil
}

// stamp returns the VG's stamp: the metadata area headers of its PVs,
// the host's device-mapper devices and the status of the devices in
// watch (watched). An error means a change cannot be ruled out (a PV
// unreadable or without an area in use, no PVs known).
func (d *Driver) stamp(watch []string) (string, error) {
	if d.stampOf != nil {
		return d.stampOf()
	}
	var pvs []string
	if p := d.stampPVs.Load(); p != nil {
		pvs = *p
	}
	s, err := pvsStamp(pvs)
	if err != nil {
		return "", err
	}
	ctl, err := os.OpenFile("/dev/mapper/control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer ctl.Close()
	dm, err := dmDevices(ctl)
	if err != nil {
		return "", fmt.Errorf("list device-mapper devices: %w", err)
	}
	var st strings.Builder
	for _, name := range watch {
		status, err := dmStatus(ctl, name)
		if err != nil {
			return "", fmt.Errorf("status of device-mapper device %s: %w", name, err)
		}
		fmt.Fprintf(&st, "%s:%s;", name, status)
	}
	return s + dm + st.String(), nil
}

// watched are the device-mapper devices whose status the stamp of a
// listing of lvs holds: the thin pools' (the pool's -tpool layer while
// thin LVs are active, the pool's own device otherwise) and the RAID LVs'.
func (d *Driver) watched(lvs map[string]LV) []string {
	var w []string
	for name, lv := range lvs {
		switch {
		case lv.SegType == "thin-pool":
			dm := volmap.DMName(d.cfg.VG, name)
			w = append(w, dm, dm+"-tpool")
		case strings.HasPrefix(lv.SegType, "raid") || lv.SegType == "mirror":
			w = append(w, volmap.DMName(d.cfg.VG, name))
		}
	}
	slices.Sort(w)
	return w
}

// pvsStamp returns the metadata area headers of the PVs.
func pvsStamp(pvs []string) (string, error) {
	if len(pvs) == 0 {
		return "", errors.New("the VG's PVs are not known")
	}
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return "", err
	}
	defer unix.Munmap(buf) //nolint:errcheck
	var s strings.Builder
	used := 0
	for _, pv := range pvs {
		n, err := pvStamp(pv, buf, &s)
		if err != nil {
			return "", fmt.Errorf("read the metadata areas of PV %s: %w", pv, err)
		}
		used += n
	}
	if used == 0 {
		return "", errors.New("no PV of the VG has a metadata area in use")
	}
	return s.String(), nil
}

// pvStamp appends the metadata area headers of the PV at path to s and
// returns how many areas are in use; buf is page-aligned scratch of 4 KiB
// (reads bypass the page cache: O_DIRECT).
func pvStamp(path string, buf []byte, s *strings.Builder) (int, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := f.ReadAt(buf, 0); err != nil {
		return 0, err
	}
	mdas, err := mdaOffsets(buf[:labelScanSectors*512])
	if err != nil {
		return 0, err
	}
	used := 0
	for _, off := range mdas {
		if off%512 != 0 || off > 1<<62 {
			return 0, fmt.Errorf("metadata area at %d", off)
		}
		if _, err := f.ReadAt(buf, int64(off&^4095)); err != nil {
			return 0, err
		}
		h := off & 4095
		if h+512 > 4096 {
			return 0, fmt.Errorf("metadata area at %d", off)
		}
		loc, inUse, err := mdaHeader(buf[h : h+512])
		if err != nil {
			return 0, fmt.Errorf("metadata area at %d: %w", off, err)
		}
		if inUse {
			used++
		}
		fmt.Fprintf(s, "%s@%d:%x;", path, off, loc)
	}
	return used, nil
}

// The device-mapper ioctls that list devices and give a device's status
// (linux/dm-ioctl.h).
const (
	dmIoctlSize    = 312 // struct dm_ioctl
	dmListDevices  = 3<<30 | dmIoctlSize<<16 | 0xfd<<8 | 2
	dmTableStatus  = 3<<30 | dmIoctlSize<<16 | 0xfd<<8 | 12
	dmBufferFull   = 1 << 8
	dmNoFlush      = 1 << 11 // DM_NOFLUSH_FLAG: a thin pool's status commits nothing
	dmNameListHead = 12      // struct dm_name_list: dev (8), next (4), then the name
	dmTargetSpec   = 40      // struct dm_target_spec, then its status text
)

// dmStatus returns the status of the device-mapper device name, every
// target's, or "absent" when there is no such device.
func dmStatus(f *os.File, name string) (string, error) {
	le := binary.LittleEndian
	if len(name) >= 128 {
		return "", errors.New("name too long")
	}
	buf := make([]byte, 16<<10)
	le.PutUint32(buf[0:], 4) // interface version 4.0.0
	le.PutUint32(buf[12:], uint32(len(buf)))
	le.PutUint32(buf[16:], dmIoctlSize)
	le.PutUint32(buf[28:], dmNoFlush)
	copy(buf[48:48+127], name)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), dmTableStatus, uintptr(unsafe.Pointer(&buf[0])))
	switch {
	case errno == unix.ENXIO:
		return "absent", nil
	case errno != 0:
		return "", errno
	case le.Uint32(buf[28:])&dmBufferFull != 0:
		return "", errors.New("status too long")
	}
	return parseDMStatus(buf, int(le.Uint32(buf[16:])), int(le.Uint32(buf[20:])))
}

// parseDMStatus reads count dm_target_spec entries, each followed by its
// status text, from start in buf (next counts from start).
func parseDMStatus(buf []byte, start, count int) (string, error) {
	le := binary.LittleEndian
	var s strings.Builder
	at := start
	for i := range count {
		if at < 0 || at+dmTargetSpec > len(buf) || i > 1024 {
			return "", errors.New("device-mapper status runs past its buffer")
		}
		text := buf[at+dmTargetSpec:]
		end := bytes.IndexByte(text, 0)
		if end < 0 {
			return "", errors.New("device-mapper status is not terminated")
		}
		fmt.Fprintf(&s, "%d+%d %s|", le.Uint64(buf[at:]), le.Uint64(buf[at+8:]), text[:end])
		next := start + int(le.Uint32(buf[at+20:]))
		if next <= at && i+1 < count {
			return "", errors.New("device-mapper status goes backwards")
		}
		at = next
	}
	return s.String(), nil
}

// dmDevices lists the host's device-mapper devices, name and number,
// sorted.
func dmDevices(f *os.File) (string, error) {
	le := binary.LittleEndian
	for size := 64 << 10; size <= 64<<20; size *= 4 {
		buf := make([]byte, size)
		le.PutUint32(buf[0:], 4) // interface version 4.0.0
		le.PutUint32(buf[12:], uint32(size))
		le.PutUint32(buf[16:], dmIoctlSize)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), dmListDevices, uintptr(unsafe.Pointer(&buf[0])))
		if errno != 0 {
			return "", errno
		}
		if le.Uint32(buf[28:])&dmBufferFull != 0 {
			continue
		}
		return parseDMNames(buf, int(le.Uint32(buf[16:])))
	}
	return "", errors.New("too many device-mapper devices")
}

// parseDMNames reads the dm_name_list entries at start in buf.
func parseDMNames(buf []byte, start int) (string, error) {
	le := binary.LittleEndian
	var devs []string
	for at := start; ; {
		if at < 0 || at+dmNameListHead > len(buf) {
			return "", errors.New("device-mapper list runs past its buffer")
		}
		dev, next := le.Uint64(buf[at:]), le.Uint32(buf[at+8:])
		if dev == 0 {
			return "", nil // no devices
		}
		name := buf[at+dmNameListHead:]
		if end := bytes.IndexByte(name, 0); end >= 0 {
			name = name[:end]
		} else {
			return "", errors.New("device-mapper list has an unterminated name")
		}
		devs = append(devs, fmt.Sprintf("%s=%d;", name, dev))
		if next == 0 {
			slices.Sort(devs)
			return strings.Join(devs, ""), nil
		}
		at += int(next)
	}
}
