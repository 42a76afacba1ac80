// Package volmap is the volume model of volfs: what a volume is, the Driver
// interface every volume manager implements, the optional capabilities a
// driver may add (create, remove, rename, resize, ...), and the sentinel
// errors that the FUSE layer maps to errno.
//
// volmap knows nothing about FUSE. A driver must never touch a block device
// outside the set it was configured with (a volume group, a list of globs):
// every name it receives comes from a user and is validated before use.
package volmap
