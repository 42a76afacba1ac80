// Package integration holds black-box tests of the built volfs binary on
// real devices with real clients (cp, dd, fio, qemu-img, qemu-io, mkfs +
// losetup + mount + fsck). Tests that need root, FUSE or a tool skip with
// the reason when it is missing; CI installs everything.
package integration
