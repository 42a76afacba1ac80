package loopdir

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
)

// attach attaches a loop device to the image at path.
func attach(path string, blockSize int) (string, error) {
	args := []string{"--find", "--show", "--sector-size", strconv.Itoa(blockSize), path}
	out, err := exec.Command("losetup", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// detachLoop detaches a loop device (the kernel does it at its last close
// when it is still open).
func detachLoop(dev string) error {
	if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup -d %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
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
