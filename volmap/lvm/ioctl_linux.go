package lvm

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

func ioctlPtr(f *os.File, req uint, arg *[2]uint64) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), uintptr(unsafe.Pointer(arg)))
	if e != 0 {
		return e
	}
	return nil
}
