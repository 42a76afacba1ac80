// Package fusectl aborts FUSE connections through the fusectl file system
// (/sys/fs/fuse/connections): every request waiting on the connection
// fails with ENOTCONN and its server's reads of /dev/fuse fail. It finds
// the connection from /proc/self/mountinfo alone and never touches the
// mount itself, whose server may be the caller or wedged.
package fusectl

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/mountinfo"
)

// Dir is where the system mounts fusectl.
const Dir = "/sys/fs/fuse/connections"

// Conn is the name of the mount's connection directory under fusectl: the
// kernel's dev_t of the mount (its own encoding, not the userspace one).
func Conn(m mountinfo.Mount) string {
	return strconv.FormatUint(uint64(m.Major)<<20|uint64(m.Minor), 10)
}

// Abort aborts the connection of the FUSE mount m. Where fusectl is not
// mounted at Dir, it fails, or with mountPrivately mounts fusectl on a
// private directory for the moment.
func Abort(m mountinfo.Mount, mountPrivately bool) error {
	abort := func(dir string) error {
		return os.WriteFile(filepath.Join(dir, Conn(m), "abort"), []byte("1"), 0)
	}
	if !mountPrivately {
		return abort(Dir)
	}
	if _, err := os.Stat(filepath.Join(Dir, Conn(m))); err == nil {
		return abort(Dir)
	}
	return withFusectl(abort)
}

// withFusectl mounts fusectl on a private directory while f runs.
func withFusectl(f func(dir string) error) error {
	tmp, err := os.MkdirTemp("", "volfs-fusectl-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := unix.Mount("fusectl", tmp, "fusectl", 0, ""); err != nil {
		return fmt.Errorf("mount fusectl: %w", err)
	}
	defer func() { _ = unix.Unmount(tmp, unix.MNT_DETACH) }()
	return f(tmp)
}
