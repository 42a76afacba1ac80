// Package multihost holds black-box tests of volfs on a volume group that
// several hosts share through lvmlockd and sanlock (issue 12). Two QEMU
// guests of integration/vm boot at once with one disk image attached to
// both (vmrun.sh -S) and a host directory both can write (vmrun.sh -w); each
// runs the same test binary with VOLFS_HOST_ID=1 or 2 and plays its host's
// part of one scenario, the two meeting at named steps through files in
// VOLFS_SYNC_DIR (Sync). The first test makes the shared VG (ensureVG) and
// TestMain removes it after the last. scripts/multihost-test.sh (make
// multihost-test) sets all of this up and decides on both exit statuses;
// TestFailover, in which host 1 powers its guest off, runs in a second
// pair of guests of its own (VOLFS_FAILOVER=1).
//
// Outside such a guest every test skips with the reason. The tests start
// sanlock and lvmlockd in the guest (its /etc is a throw-away overlay) and
// never touch a disk whose virtio serial does not say it is a scratch disk.
package multihost
