package volmap

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DeviceSize returns the size of an open block device in bytes. fstat says
// 0 for block devices; the kernel answers BLKGETSIZE64.
func DeviceSize(f *os.File) (int64, error) {
	size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return 0, fmt.Errorf("BLKGETSIZE64 %s: %w", f.Name(), err)
	}
	return int64(size), nil
}

// LogicalBlockSize returns the smallest unit of O_DIRECT I/O on a block
// device (BLKSSZGET), usually 512.
func LogicalBlockSize(f *os.File) (int, error) {
	n, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
	if err != nil {
		return 0, fmt.Errorf("BLKSSZGET %s: %w", f.Name(), err)
	}
	return n, nil
}

// IsBlockDevice reports whether path names a block device (after following
// symlinks).
func IsBlockDevice(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0
}
