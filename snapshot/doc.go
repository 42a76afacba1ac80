// Package snapshot is what the volfs CLI and server share about snapshots
// and clones: the control operations and their arguments and results, and
// how a path names an image or a snapshot (MOUNT/IMAGE,
// MOUNT/.snapshots/IMAGE/NAME); and Copy, the data loop of a clone by copy
// (over io.ReaderAt/io.WriterAt: the server opens the devices).
//
// The work itself is done by the server (fs.Root's CreateSnapshot,
// Rollback, Clone..., which flush volfs's own writes first) on a driver's
// volmap.Snapshotter (thin snapshots for LVM). This package must never
// talk to LVM or to FUSE.
package snapshot
