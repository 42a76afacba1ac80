package lvm

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
)

var (
	_ volmap.Zeroer      = (*Driver)(nil)
	_ volmap.NameChecker = (*Driver)(nil)
	_ volmap.Replacer    = (*Driver)(nil)
)

// Zero makes [off, off+length) of a file's LV read as zeros. A thin LV
// unmaps the whole pool chunks in the range with a discard (reads of
// unmapped chunks return zeros, and the pool gets the space back) and
// writes zeros only into the partial chunks at either end; writing zeros
// all over would allocate the whole range in the pool. A linear LV gets
// FALLOC_FL_ZERO_RANGE, which the kernel serves with write-zeroes where the
// device has it and by writing zeros where not.
func (d *Driver) Zero(ctx context.Context, name string, f *os.File, off, length int64) error {
	lv, err := d.file(ctx, name)
	if err != nil {
		return err
	}
	chunk := d.chunkOf(ctx, lv)
	end := off + length
	if chunk <= 0 || length < chunk {
		return zeroRange(f, off, length)
	}
	first := (off + chunk - 1) / chunk * chunk
	last := end / chunk * chunk
	if first > off {
		if err := zeroRange(f, off, first-off); err != nil {
			return err
		}
	}
	if last > first {
		// BLKDISCARD: the block layer splits it; dm-thin unmaps each
		// whole chunk.
		rng := [2]uint64{uint64(first), uint64(last - first)}
		if err := ioctlPtr(f, unix.BLKDISCARD, &rng); err != nil {
			return fmt.Errorf("discard %d bytes at %d of %s/%s: %w", last-first, first, d.cfg.VG, lv.Name, err)
		}
	}
	if end > last && last >= first {
		return zeroRange(f, last, end-last)
	}
	return nil
}

func zeroRange(f *os.File, off, length int64) error {
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length); err != nil {
		return fmt.Errorf("zero %d bytes at %d of %s: %w", length, off, f.Name(), err)
	}
	return nil
}

// CheckName says whether a file may be created under name: it must encode
// to an LV name that LVM and device-mapper accept in this VG.
func (d *Driver) CheckName(name string) error {
	_, err := d.newLVName(name)
	return err
}
