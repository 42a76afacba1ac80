#!/bin/bash
# install-deps.sh - install the Debian packages that integration/vm needs to
# run tests in a throw-away QEMU guest (Debian 12, as root). Idempotent: does
# nothing (not even apt-get update) when everything is installed.
#   -n   dry run: only print what would be installed
# Takes about 1.5 min on a fresh machine.
set -euo pipefail

PKGS=(
  qemu-system-x86          # the guest (TCG; 9p virtfs, virtio devices)
  qemu-utils               # qemu-img, qemu-io for tests
  linux-image-amd64        # guest kernel + its modules (dm-*, fuse, loop, 9p, ...)
  kmod                     # modprobe --show-depends to pick initramfs modules
  busybox-static           # the initramfs userland
  cpio gzip xz-utils       # initramfs packing, vmlinux extraction
  binutils                 # readelf (PVH note / static busybox checks)
  util-linux               # setpriv --pdeathsig, flock, losetup
  lvm2                     # lvm/dmsetup, run in the guest from the host root
  thin-provisioning-tools  # thin_check etc., run by lvm for thin pools
  sanlock lvm2-lockd       # shared VGs in the guests of scripts/multihost-test.sh
  fuse3                    # fusermount3 for FUSE tests
  fio                      # I/O checks and benchmarks
)

DRY=0
[ "${1:-}" = "-n" ] && DRY=1

missing=()
for p in "${PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already installed"
  exit 0
fi
echo "install-deps: missing: ${missing[*]}"
if [ "$DRY" = 1 ]; then exit 0; fi
[ "$(id -u)" = 0 ] || { echo "install-deps: must run as root" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# INITRD=No: the kernel's postinst hook skips update-initramfs (~35 s); the
# Debian initrd is never used (mkinitramfs.sh builds the guest's own).
INITRD=No apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"

ls /boot/vmlinuz-* >/dev/null 2>&1 || { echo "install-deps: no /boot/vmlinuz-* after install" >&2; exit 1; }
echo "install-deps: done"
