package volmap

import (
	"context"
	"os"
	"time"

	"github.com/volfs/volfs/meta"
)

// Volume is one volume as a driver sees it.
type Volume struct {
	// Name is the file name shown in the mount (already decoded).
	Name string
	// ID is a stable identity (an LV UUID, a device's serial) that survives
	// renames and remounts; inode numbers and state files derive from it.
	ID string
	// Size is the size of the volume's block device in bytes.
	Size int64
	// Used is how many bytes are really allocated (thin volumes); -1 when
	// the whole of Size is.
	Used int64
	// Thin: unwritten blocks read as zeros and a discard unmaps them.
	Thin bool
	// Layout is how the volume's bytes lie on the devices (zero when the
	// driver does not say).
	Layout Layout
	// Attrs are the persisted file attributes (mode, owner, times, logical
	// size, xattrs).
	Attrs meta.Attrs
	// Defaulted: nothing is recorded for this volume, Attrs are the
	// driver's defaults (the mount may give such files its own owner and
	// mode).
	Defaulted bool
}

// Driver is the small core every volume driver implements.
type Driver interface {
	// List returns every volume that is a file of this mount.
	List(ctx context.Context) ([]Volume, error)
	// Lookup returns one volume by file name, or ErrNotFound.
	Lookup(ctx context.Context, name string) (Volume, error)
	// Open opens the volume's block device with the given open(2) flags
	// (O_DIRECT among them), activating the volume if it needs it.
	Open(ctx context.Context, name string, flag int) (*os.File, error)
	// SetAttrs persists a volume's attributes.
	SetAttrs(ctx context.Context, name string, a meta.Attrs) error
}

// Space is what statfs reports.
type Space struct {
	Total, Free int64
}

// SpaceReporter is implemented by drivers that know their pool's size.
type SpaceReporter interface {
	Space(ctx context.Context) (Space, error)
}

// SpaceHinter is implemented by SpaceReporters that cache the space:
// SpaceHint returns the space last read, kept up to date with the driver's
// own allocations, however old, without asking the volume manager (ok is
// false when there is none). It is good enough to go ahead with a create
// (the volume manager refuses what does not fit), not to refuse one.
type SpaceHinter interface {
	SpaceHint() (s Space, ok bool)
}

// Creator creates a volume of at least size bytes with the given attributes.
type Creator interface {
	Create(ctx context.Context, name string, size int64, a meta.Attrs) (Volume, error)
}

// Remover removes a volume. A volume held open outside volfs gives ErrInUse.
type Remover interface {
	Remove(ctx context.Context, name string) error
}

// Renamer renames a volume. It fails with ErrExists when newName exists.
type Renamer interface {
	Rename(ctx context.Context, oldName, newName string) error
}

// Resizer changes a volume's device size to at least size bytes and returns
// the size the device has afterwards (drivers round up to their allocation
// unit).
type Resizer interface {
	Resize(ctx context.Context, name string, size int64) (int64, error)
}

// Replacer renames a volume over an existing one: the old target is removed
// only once the new name is in place, and a failure puts everything back.
type Replacer interface {
	Replace(ctx context.Context, oldName, newName string) error
}

// Detacher takes a volume out of the file namespace without destroying it,
// for a file removed while volfs still has it open (a running VM's disk):
// as with any file system, the bytes stay reachable through the open
// handles until the last one closes, and then Purge destroys the volume.
// Detached volumes that outlive their server are the driver's to clean up.
// Detach fails with ErrInUse when something outside this process holds the
// volume (it could not be purged at the last close). Reattach puts a
// detached volume back under name (the rollback of a rename over an open
// file).
type Detacher interface {
	Detach(ctx context.Context, name string) (token string, err error)
	Reattach(ctx context.Context, token, name string) error
	Purge(ctx context.Context, token string) error
}

// DetachReplacer renames a volume over one that volfs has open, in one
// step that a crash cannot leave half done: the replaced volume is
// detached (as Detach does; the token is for Purge at its last close)
// instead of removed. It fails with ErrInUse when something outside this
// process holds the replaced volume.
type DetachReplacer interface {
	ReplaceDetach(ctx context.Context, oldName, newName string) (token string, err error)
}

// NameChecker validates a file name before anything is created under it,
// so a bad name fails at open(O_CREAT) and not at the first write.
type NameChecker interface {
	CheckName(name string) error
}

// Identity is the stable identity of a volume: the one volfs recorded when
// it created the file, else the driver's.
func (v Volume) Identity() string {
	if v.Attrs.ID != "" {
		return v.Attrs.ID
	}
	return v.ID
}

// Flusher is implemented by drivers that keep state of their own to write
// out (metadata caches) on unmount.
type Flusher interface {
	Flush(ctx context.Context) error
}

// Idler is implemented by drivers that hold something for a volume while
// volfs has it open, besides its device fds: on a VG shared between hosts,
// the exclusive activation that is the volume's cluster-wide lock. volfs
// calls Idle once nothing of it has the file open any more (after the last
// close has flushed it and persisted its attributes, or after an fd opened
// for one operation is closed); the driver then gives back what Open or
// Create took.
type Idler interface {
	Idle(ctx context.Context, name string)
}

// SizeGuard is implemented by drivers that may refuse a change of a
// volume's size that needs no resize of the volume (a truncate within the
// space it has): on a VG shared between hosts, a volume another host has
// open. volfs asks before it changes the size; an error wrapping ErrInUse
// is EBUSY.
type SizeGuard interface {
	CheckResize(ctx context.Context, name string) error
}

// Zeroer makes a byte range of a volume read as zeros in the cheapest way
// the driver knows (a thin volume unmaps whole chunks instead of writing
// zeros). f is an open fd of the volume's device, kept open by the caller
// for the whole call (fs holds the device's reference); off and length are
// whole logical blocks of it (volfs zeroes partial blocks itself). Without it,
// volfs uses fallocate(FALLOC_FL_ZERO_RANGE) on the device.
type Zeroer interface {
	Zero(ctx context.Context, name string, f *os.File, off, length int64) error
}

// Extent is the byte range [Off, Off+Len) of a volume's device.
type Extent struct {
	Off, Len int64
}

// Sparser is implemented by drivers whose volumes may leave ranges
// unallocated (thin volumes): such a range reads as zeros and holds no
// space. Without it, or for a volume it says is not sparse, every byte of
// a volume is data.
type Sparser interface {
	// UnmapUnit returns the size of the aligned chunks of the volume that
	// Zeroer.Zero unmaps rather than writes (a thin pool's chunk size),
	// or 0 when the volume is not sparse or Zero would write zeros anyway.
	// A write of zeros covering such chunks may then be served by Zero
	// without allocating them.
	UnmapUnit(ctx context.Context, name string) (int64, error)
	// Allocated returns the ranges of the volume, open as f (kept open by
	// the caller), that hold data, sorted and disjoint, as the volume's
	// allocator had them when the call started; everything else reads as
	// zeros. It may report more than is allocated, never less.
	Allocated(ctx context.Context, name string, f *os.File) ([]Extent, error)
}

// Snapshot is a read-only, point-in-time copy of a volume (see
// Snapshotter).
type Snapshot struct {
	// Name is the snapshot's name, unique among the snapshots of one
	// volume; any file name.
	Name string
	// Origin is the Identity of the volume it was taken of: a snapshot
	// follows its volume through renames.
	Origin string
	// ID is the snapshot's own stable identity.
	ID string
	// Created is when it was taken.
	Created time.Time
	// Size is the snapshot's device size; Attrs.Size, if not -1, the
	// logical size of the file at the time.
	Size int64
	// Used is how many bytes the pool holds for it (-1 if unknown).
	Used int64
	// Attrs are the volume's attributes when the snapshot was taken
	// (Attrs.ID is empty).
	Attrs meta.Attrs
	// Device is the driver's name for it (an LV name), for messages.
	Device string
}

// Snapshotter is implemented by drivers that take snapshots and make
// clones. image is a file name; its snapshots follow its Identity. Callers
// flush the volume's writes and persist its attributes first.
type Snapshotter interface {
	// CreateSnapshot takes a snapshot called name of image, recording a
	// as the snapshot's attributes.
	CreateSnapshot(ctx context.Context, image, name string, a meta.Attrs) (Snapshot, error)
	// Snapshots lists the snapshots of the volume whose Identity is
	// origin, sorted by creation time.
	Snapshots(ctx context.Context, origin string) ([]Snapshot, error)
	// DeleteSnapshot removes a snapshot (ErrInUse while it is open).
	DeleteSnapshot(ctx context.Context, origin, name string) error
	// RenameSnapshot renames a snapshot (ErrExists if newName is taken).
	RenameSnapshot(ctx context.Context, origin, oldName, newName string) error
	// Rollback replaces the data of image with the snapshot's: afterwards
	// image is a writable copy of the snapshot with attributes a (which
	// keep the file's identity). All or nothing; ErrInUse while image is
	// open anywhere.
	Rollback(ctx context.Context, image, name string, a meta.Attrs) error
	// Clone makes dst a new writable volume with the data of image, or of
	// its snapshot called snap when snap is not empty, and attributes a.
	Clone(ctx context.Context, image, snap, dst string, a meta.Attrs) (Volume, error)
	// OpenSnapshot opens a snapshot's device read-only (activating it);
	// every OpenSnapshot is paired with a CloseSnapshot of the same s, and
	// the last one deactivates what OpenSnapshot activated.
	OpenSnapshot(ctx context.Context, s Snapshot) (*os.File, error)
	CloseSnapshot(ctx context.Context, s Snapshot)
}
