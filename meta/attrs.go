package meta

import (
	"fmt"
	"maps"
	"time"
)

// Attrs are the attributes of one image file.
type Attrs struct {
	// ID is the identity volfs gave a file it created; inode numbers
	// derive from it, so a file keeps its inode number from the moment it
	// is created, before and after its volume exists. Empty for volumes
	// made by other tools (their driver identity is used).
	ID    string
	Mode  uint32 // permission bits (07777), no type bits
	UID   uint32
	GID   uint32
	Atime time.Time
	Mtime time.Time
	Ctime time.Time
	// Size is the logical byte size of the file; -1 means "the size of the
	// device" (nothing recorded).
	Size int64
	// Xattrs are the user.* and trusted.* extended attributes (see
	// XattrStored), keyed by full name.
	Xattrs map[string][]byte
}

// Clone returns a copy that shares no memory with a.
func (a Attrs) Clone() Attrs {
	c := a
	if a.Xattrs != nil {
		c.Xattrs = make(map[string][]byte, len(a.Xattrs))
		for k, v := range a.Xattrs {
			c.Xattrs[k] = append([]byte(nil), v...)
		}
	}
	return c
}

// Equal reports whether a and b describe the same attributes (times
// compared to the nanosecond).
func (a Attrs) Equal(b Attrs) bool {
	return a.ID == b.ID && a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID &&
		a.Atime.Equal(b.Atime) && a.Mtime.Equal(b.Mtime) && a.Ctime.Equal(b.Ctime) &&
		a.Size == b.Size && len(a.Xattrs) == len(b.Xattrs) &&
		maps.EqualFunc(a.Xattrs, b.Xattrs, func(x, y []byte) bool { return string(x) == string(y) })
}

// CheckTime reports whether every store can hold t: the state file of
// `--device` mounts keeps RFC 3339 times, whose years run from 0 to 9999
// (LVM tags would hold any second). A time outside is refused when it is
// set, never found when attributes are saved.
func CheckTime(t time.Time) error {
	for _, y := range []int{t.Year(), t.UTC().Year()} {
		if y < 0 || y > 9999 {
			return fmt.Errorf("time %s is outside the years 0 to 9999 that volfs can store", t.UTC().Format(time.RFC3339))
		}
	}
	return nil
}
