package fs

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"syscall"

	"github.com/volfs/volfs/volmap"
)

// Names of the operations whose device errors need their own mapping.
const (
	opNameWrite     = "write"
	opNameZeroRange = "zero range"
	opNamePunchHole = "punch hole"
)

// zeroOps may answer EOPNOTSUPP: fallocate's callers (qemu, fio) then zero
// by writing, as they do on a file system that cannot.
var zeroOps = map[string]bool{opNameZeroRange: true, opNamePunchHole: true}

// writeOps change the device's bytes.
var writeOps = map[string]bool{opNameWrite: true, opNameZeroRange: true, opNamePunchHole: true}

// toErrno is the one place where errors become errno. It never answers
// ENOSYS (the kernel would stop sending that operation for the rest of the
// mount) and logs every error it turns into EIO, with what failed and on
// which volume.
func (r *Root) toErrno(op, name string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	switch {
	case errors.Is(err, volmap.ErrNotFound):
		e = syscall.ENOENT
	case errors.Is(err, volmap.ErrExists):
		e = syscall.EEXIST
	case errors.Is(err, volmap.ErrInUse):
		e = syscall.EBUSY
	case errors.Is(err, volmap.ErrNoSpace):
		e = syscall.ENOSPC
	case errors.Is(err, volmap.ErrInvalidName), errors.Is(err, volmap.ErrLayout):
		e = syscall.EINVAL
	case errors.Is(err, volmap.ErrNameTooLong):
		e = syscall.ENAMETOOLONG
	case errors.Is(err, volmap.ErrNotSupported):
		e = syscall.EPERM
	case errors.Is(err, volmap.ErrReadOnly):
		e = syscall.EROFS
	case errors.Is(err, volmap.ErrChanged):
		e = syscall.ESTALE
	case errors.Is(err, context.Canceled):
		e = syscall.EINTR
	case errors.As(err, &e):
		switch {
		case e == syscall.ENOSYS:
			e = syscall.EIO
		case e == syscall.EOPNOTSUPP && !zeroOps[op]:
			e = syscall.EIO
		case e == syscall.EPERM && writeOps[op]:
			// The kernel refuses writes to a read-only block device
			// (losetup -r, blockdev --setro) with EPERM; on a file that
			// is EROFS, as on a read-only medium.
			e = syscall.EROFS
		}
	default:
		e = syscall.EIO
	}
	switch {
	case e == syscall.ENOSPC && writeOps[op]:
		r.noSpace(name)
	case e == syscall.EIO && (writeOps[op] || strings.Contains(op, "flush") || op == "fsync"):
		r.poolIOError(name)
	}
	switch {
	case e == syscall.ENOENT:
	case errors.Is(err, context.Canceled):
		// Its caller withdrew the request (a signal: FUSE_INTERRUPT).
		r.log.Debug(op+" interrupted", slog.String("volume", name), slog.Any("err", err))
	default:
		r.log.Warn(op+" failed", slog.String("volume", name), slog.String("errno", e.Error()), slog.Any("err", err))
	}
	return e
}
