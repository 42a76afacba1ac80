package loopdir

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
)

// attach attaches a loop device to the image at path with ioctls
// (LOOP_CTL_GET_FREE, LOOP_CONFIGURE), not losetup: the driver runs inside
// the in-process test servers, and a fork while an image's lock is held
// deadlocks when the test process holds a file of the mount open (the
// child's exec closes it, and that FLUSH needs the same lock).
func attach(path string, blockSize int) (string, error) {
	img, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer img.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer ctl.Close()
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("LOOP_CTL_GET_FREE for %s: %w", path, err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", fmt.Errorf("attach %s: %w", path, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(img.Fd()), Size: uint32(blockSize)}
		copy(cfg.Info.File_name[:], path)
		err = unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
		f.Close()
		if err == nil {
			return dev, nil
		}
		// Another process took the free device between the two calls.
		if !errors.Is(err, unix.EBUSY) || attempt >= 10 {
			return "", fmt.Errorf("LOOP_CONFIGURE %s over %s: %w", dev, path, err)
		}
	}
}

// detachLoop detaches a loop device (the kernel does it at its last close
// when it is still open), as losetup -d does.
func detachLoop(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil {
		return fmt.Errorf("LOOP_CLR_FD %s: %w", dev, err)
	}
	return nil
}

// openLoop opens dev and checks, on the opened fd, that it is a loop
// device with the image at path behind it.
func openLoop(dev, path string, flag int) (*os.File, error) {
	if dev == "" {
		return nil, fmt.Errorf("%s has no loop device (driver closed)", path)
	}
	f, err := os.OpenFile(dev, flag, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		f.Close()
		return nil, fmt.Errorf("%s is not a block device (%v)", dev, err)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d/loop/backing_file", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	b, err := os.ReadFile(sys)
	if got := strings.TrimSpace(string(b)); err != nil || got != path {
		f.Close()
		return nil, fmt.Errorf("%s is not the loop device of %s (%s says %q, %v)", dev, path, sys, got, err)
	}
	return f, nil
}

// setCapacity makes the loop device take its image's new size and checks
// that it did.
func setCapacity(dev string, want int64) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("LOOP_SET_CAPACITY %s: %w", dev, err)
	}
	got, err := volmap.DeviceSize(f)
	if err == nil && got != want {
		err = fmt.Errorf("%s is %d bytes after LOOP_SET_CAPACITY, want %d", dev, got, want)
	}
	return err
}

// StaleByte fills the blocks that stale marks.
const StaleByte = 0xA5

// staleStride is how far apart stale's blocks are: dense enough that any
// read of more than a few blocks of space nobody wrote meets one.
const staleStride = 64 << 10

// stale writes a block of StaleByte every staleStride bytes of [from, to)
// of dev, and into its last block: a linear LV's new extents hold what an
// older LV left there, and a caller must never show those bytes as file
// data. The writes are direct, so no page cache of dev keeps older bytes.
func stale(dev string, from, to int64) error {
	if to <= from {
		return nil
	}
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	for i := range buf {
		buf[i] = StaleByte
	}
	for off := from; off < to; off += staleStride {
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("stale bytes at %d of %s: %w", off, dev, err)
		}
	}
	if _, err := f.WriteAt(buf, to-4096); err != nil {
		return fmt.Errorf("stale bytes at %d of %s: %w", to-4096, dev, err)
	}
	return nil
}

// Zeroing is the driver with the Zeroer capability: volfs then zeroes
// through it instead of calling fallocate itself. A thin driver punches
// holes (the image gives the space back), a linear one zeroes the range.
type Zeroing struct{ *Driver }

// Zero makes [off, off+length) of the volume's device f read as zeros.
func (z Zeroing) Zero(ctx context.Context, name string, f *os.File, off, length int64) error {
	d := z.Driver
	d.mu.Lock()
	defer d.mu.Unlock()
	// f is the volume's device, whatever name it has now (a file removed
	// while open keeps being zeroed through its fd): name is for messages.
	if err := d.begin(OpZero, name); err != nil {
		return err
	}
	mode := unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	if d.cfg.Thin {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	if err := unix.Fallocate(int(f.Fd()), uint32(mode), off, length); err != nil {
		return fmt.Errorf("zero %d bytes at %d of %q (%s): %w", length, off, name, f.Name(), err)
	}
	d.done(OpZero)
	return nil
}

var _ volmap.Sparser = Zeroing{}

// sparseUnit is the chunk a thin loopdir volume unmaps: any block-aligned
// range can be punched in the image file; 64 KiB is dm-thin's smallest
// chunk.
const sparseUnit = 64 << 10

// UnmapUnit is sparseUnit for thin volumes (Zero punches holes), else 0.
func (z Zeroing) UnmapUnit(ctx context.Context, name string) (int64, error) {
	if !z.cfg.Thin {
		return 0, nil
	}
	return sparseUnit, nil
}

// Allocated returns the data ranges of the image file behind the loop
// device f (SEEK_DATA/SEEK_HOLE on it): what the volume really holds. A
// linear volume is all data.
func (z Zeroing) Allocated(ctx context.Context, name string, f *os.File) ([]volmap.Extent, error) {
	size, err := volmap.DeviceSize(f)
	if err != nil {
		return nil, err
	}
	if !z.cfg.Thin {
		return []volmap.Extent{{Off: 0, Len: size}}, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("mapping of %q: %w", name, err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/loop/backing_file", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	if err != nil {
		return nil, fmt.Errorf("mapping of %q: %w", name, err)
	}
	img, err := os.Open(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("mapping of %q: %w", name, err)
	}
	defer img.Close()
	var ext []volmap.Extent
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(img.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && data >= size) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("mapping of %q: SEEK_DATA: %w", name, err)
		}
		hole, err := unix.Seek(int(img.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("mapping of %q: SEEK_HOLE: %w", name, err)
		}
		hole = min(hole, size)
		ext = append(ext, volmap.Extent{Off: data, Len: hole - data})
		off = hole
	}
	return ext, nil
}
