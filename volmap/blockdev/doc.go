// Package blockdev is the volfs driver for block devices that already exist
// (zvols, RBD images, loop devices, partitions): every device matched by
// the configured globs is a file named after the device's base name.
//
// It cannot create, remove, rename or resize volumes. Attributes live in a
// state directory keyed by a stable identity of each device. It must never
// open a path that the configured globs do not match.
package blockdev
