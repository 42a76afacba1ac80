// Package lvm holds black-box tests of the built volfs binary mounted over
// real LVM volume groups (`volfs mount --vg`), driven by real clients (cp,
// rsync, dd, qemu-img, losetup + mkfs.ext4 + mount + fsck) and checked with
// `lvs --reportformat json`.
//
// They need device-mapper, so they run inside the throw-away QEMU guest of
// integration/vm, with a volfs binary built on the host (building in the
// TCG guest is far too slow):
//
//	make build
//	go test -count=1 -exec "$PWD/integration/vm/vmrun.sh -D 4G -e VOLFS_BIN=$PWD/bin/volfs --" ./integration/lvm/
//
// (`make vmtest` does both). Outside the guest, or without VOLFS_BIN, every
// test skips with the reason. Each test builds its own VG on the scratch
// disk and removes it, its mounts, loop devices and PV label when it ends,
// even when it fails.
package lvm
