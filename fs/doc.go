// Package fs is the FUSE adapter of volfs: a root directory whose entries
// are the volumes of a volmap.Driver, an image-file node per volume and an
// open-file handle that reads and writes the volume's block device.
//
// fs is thin: it translates kernel requests into calls on volmap and meta
// and maps their errors to errno in one place (errno.go). It holds no policy
// of a volume manager and must never open a device other than through the
// driver.
package fs
