// Package snapshot will hold volfs's snapshots and clones: their naming,
// create/list/delete/rollback, and cloning a file by a thin snapshot or by
// a copy that skips zero blocks. Nothing is implemented yet; the FUSE layer
// and the drivers must not grow snapshot logic of their own meanwhile.
package snapshot
