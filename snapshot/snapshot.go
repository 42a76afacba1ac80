package snapshot

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// Dir is the directory of snapshots in a mount's root (fs.SnapshotDir).
const Dir = ".snapshots"

// Control operations (internal/control).
const (
	OpCreate   = "snapshot.create"
	OpList     = "snapshot.list"
	OpDelete   = "snapshot.delete"
	OpRollback = "snapshot.rollback"
	OpClone    = "clone"
)

// Args are the arguments of every operation.
type Args struct {
	Image string `json:"image"`
	// Name is the snapshot (create, delete, rollback) or, for clone, the
	// snapshot of Image to clone ("" clones the image itself).
	Name string `json:"name,omitempty"`
	// Dst is the new file of a clone.
	Dst string `json:"dst,omitempty"`
}

// Info describes one snapshot (or, for clone, the new file).
type Info struct {
	Name    string    `json:"name"`
	Image   string    `json:"image"`
	Created time.Time `json:"created,omitzero"`
	// Size is the file's size in bytes, Used what the pool holds for it
	// (-1 if unknown).
	Size int64 `json:"size"`
	Used int64 `json:"used"`
	// Device is where it lives (VG/LV).
	Device string `json:"device,omitempty"`
	// Path is the file in the mount.
	Path string `json:"path,omitempty"`
}

// Target is what a path in a volfs mount names.
type Target struct {
	Mount string // the mount point (absolute)
	Image string // the image's file name
	Snap  string // the snapshot's name, for MOUNT/.snapshots/IMAGE/NAME
}

// ParsePath splits an absolute, clean path into mount point, image and
// snapshot. volfs mounts are flat: an image is a child of the mount point,
// a snapshot a grandchild of its .snapshots directory.
func ParsePath(abs string) (Target, error) {
	if !filepath.IsAbs(abs) {
		return Target{}, fmt.Errorf("%s: not an absolute path", abs)
	}
	abs = filepath.Clean(abs)
	dir, base := filepath.Split(abs)
	dir = filepath.Clean(dir)
	if base == "" || base == Dir || dir == "/" && base == "" {
		return Target{}, fmt.Errorf("%s: not an image of a volfs mount (MOUNT/IMAGE)", abs)
	}
	if up, img := filepath.Split(dir); img != "" && filepath.Base(filepath.Clean(up)) == Dir {
		return Target{Mount: filepath.Dir(filepath.Clean(up)), Image: img, Snap: base}, nil
	}
	if filepath.Base(dir) == Dir {
		return Target{}, errors.New(abs + ": a snapshot is MOUNT/" + Dir + "/IMAGE/NAME")
	}
	return Target{Mount: dir, Image: base}, nil
}
