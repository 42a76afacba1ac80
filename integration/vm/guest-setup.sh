# shellcheck shell=bash
# Guest-side setup. vmrun.sh copies this file into the cmd.sh it generates, so
# it runs inside the guest (in the chroot on the host root overlay, as root)
# before the command. Every test binary therefore finds device-mapper, FUSE
# and loop ready, and LVM configured for a guest without udev. A failure is
# fatal (exit 125): tests never run in a half-prepared guest.
volfs_vm_setup() {
  # dm-thin-pool pulls dm-bufio, dm-bio-prison, dm-persistent-data and crc32c;
  # they are named anyway so that a missing one is reported by name.
  modprobe -a dm-mod dm-bufio dm-bio-prison dm-persistent-data dm-thin-pool \
    dm-snapshot fuse loop || return 1
  # RAID layouts (lvcreate --type raid1/raid5/raid6/raid10): dm-raid and
  # the md personalities it asks for. Striped LVs need only dm-mod.
  modprobe -a dm-raid raid1 raid10 raid456 || return 1
  # devtmpfs creates these nodes when the modules register; be explicit.
  [ -c /dev/mapper/control ] || dmsetup mknodes || return 1
  [ -c /dev/mapper/control ] || { echo "no /dev/mapper/control"; return 1; }
  [ -c /dev/fuse ] || mknod /dev/fuse c 10 229 || return 1
  chmod 0666 /dev/fuse   # as udev's rule does
  [ -c /dev/loop-control ] || mknod /dev/loop-control c 10 237 || return 1
  mkdir -p /etc/lvm /run/lvm /run/lock/lvm || return 1
  # No udev in the guest: libdevmapper creates /dev/mapper/* and /dev/VG/LV
  # itself; without these settings lvcreate fails ("not found: device not
  # cleared"). No dmeventd/lvmpolld daemons either. This overrides the host's
  # lvmlocal.conf only in the guest's tmpfs overlay.
  cat > /etc/lvm/lvmlocal.conf <<'CONF' || return 1
# written by volfs integration/vm guest setup
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
}
global {
    use_lvmpolld = 0
}
CONF
}
if ! volfs_vm_setup; then
  echo "volfs-vm: guest setup failed (modules dm-mod/dm-thin-pool/dm-snapshot/dm-raid/fuse/loop, /etc/lvm)" >&2
  exit 125
fi
unset -f volfs_vm_setup
export LVM_SUPPRESS_FD_WARNINGS=1
