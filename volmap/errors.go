package volmap

import "errors"

// Sentinel errors. Drivers wrap them with context
// (fmt.Errorf("lvcreate vg0/web: %w", ErrNoSpace)); callers test with errors.Is.
var (
	ErrNotFound     = errors.New("no such volume")
	ErrExists       = errors.New("volume exists")
	ErrInUse        = errors.New("volume in use")
	ErrNoSpace      = errors.New("no space left")
	ErrInvalidName  = errors.New("invalid name")
	ErrNameTooLong  = errors.New("name too long")
	ErrNotSupported = errors.New("not supported by this driver")
	ErrReadOnly     = errors.New("read-only")
)
