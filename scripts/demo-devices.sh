#!/bin/bash
# Demo: two scratch loop devices (sparse files on /dev/shm) mounted as image
# files with `volfs mount --device`; shows cp, qemu-img, ls and stat working
# on them, then removes everything it made.
set -euo pipefail
VOLFS=${VOLFS:-$(cd "$(dirname "$0")/.." && pwd)/bin/volfs}
work=$(mktemp -d /tmp/volfs-demo.XXXXXX)
loops=()
cleanup() {
  mountpoint -q "$work/images" 2>/dev/null && { "$VOLFS" umount "$work/images" || umount -l "$work/images"; }
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -f /dev/shm/volfs-demo-*.img
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

for n in web db; do
  truncate -s 256M "/dev/shm/volfs-demo-$n.img"
  loops+=("$(losetup --find --show "/dev/shm/volfs-demo-$n.img")")
done
mkdir "$work/images"
echo "scratch devices: ${loops[*]}"
step "$VOLFS" mount --device "${loops[0]}" --device "${loops[1]}" \
  --state-dir "$work/state" --log-file "$work/volfs.log" "$work/images"
a=$(basename "${loops[0]}") b=$(basename "${loops[1]}")
step ls -l "$work/images"
head -c 50000000 /dev/urandom > "$work/disk.raw"
step cp "$work/disk.raw" "$work/images/$a"
step cmp -n 50000000 "$work/disk.raw" "${loops[0]}"
echo "(the device holds exactly the bytes cp wrote through the file)"
step qemu-img create -q -f qcow2 "$work/template.qcow2" 200M
step qemu-img convert -n -O raw "$work/template.qcow2" "$work/images/$b"
step qemu-img info -f raw "$work/images/$b"
step chmod 0640 "$work/images/$a"
step chown 107:107 "$work/images/$a"
step stat -c '%n %s bytes, mode %a, owner %u:%g' "$work/images/$a"
step df -h "$work/images"
step "$VOLFS" umount "$work/images"
step "$VOLFS" mount --device "${loops[0]}" --device "${loops[1]}" \
  --state-dir "$work/state" --log-file "$work/volfs.log" "$work/images"
echo "(mode and owner survived the remount)"
step stat -c '%n %s bytes, mode %a, owner %u:%g' "$work/images/$a"
step "$VOLFS" umount "$work/images"
