#!/bin/bash
# Demo: every LV of a volume group as a file (`volfs mount --vg`). Makes a
# throw-away VG on two loop devices over sparse files in /dev/shm, mounts
# it, and shows cp, ls -l, mv, truncate and rm, each followed by what `lvs`
# says; then removes everything it made.
#
# It needs device-mapper. Where the kernel has none (these build machines)
# the script runs itself inside the throw-away QEMU guest of
# integration/vm (vmrun.sh), with the volfs binary built on the host.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
VOLFS=${VOLFS:-$root/bin/volfs}
[ -x "$VOLFS" ] || { echo "demo-lvm: $VOLFS is missing: run make build" >&2; exit 1; }

if ! dmsetup version >/dev/null 2>&1; then
  if [ "${VOLFS_VM:-}" = 1 ]; then
    echo "demo-lvm: no device-mapper even in the guest" >&2
    exit 1
  fi
  echo "(this kernel has no device-mapper: running the LVM demo in a QEMU guest, about a minute)"
  exec "$root/integration/vm/vmrun.sh" -e VOLFS="$VOLFS" -e TERM -- "$0" "$@"
fi

vg=volfsdemo$$
work=$(mktemp -d /tmp/volfs-demo-lvm.XXXXXX)
mnt=$work/images
loops=()
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then "$VOLFS" umount "$mnt" || umount -l "$mnt"; fi
  if vgs "$vg" >/dev/null 2>&1; then vgremove -q -ff --yes "$vg" >/dev/null || true; fi
  for l in "${loops[@]}"; do
    pvremove -q -ff --yes "$l" >/dev/null 2>&1 || true
    losetup -d "$l" 2>/dev/null || true
  done
  rm -f /dev/shm/"$vg"-*.img
  rm -rf "$work"
}
trap cleanup EXIT
bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
# lvs_ shows the VG's LVs the way an administrator would look at them.
lvs_() {
  printf '\033[2m'
  lvs -o lv_name,lv_size,segtype,lv_attr --units m "$vg"
  printf '\033[0m'
}
tags() {
  printf '\033[2m(tags of %s/%s)\n' "$vg" "$1"
  lvs --noheadings -o lv_tags "$vg/$1" | tr -d ' ' | tr , '\n' | sed 's/^/  /'
  printf '\033[0m'
}

bold "A volume group on two scratch loop devices"
for n in 0 1; do
  truncate -s 512M "/dev/shm/$vg-$n.img"
  loops+=("$(losetup --find --show "/dev/shm/$vg-$n.img")")
done
step pvcreate -q "${loops[@]}"
step vgcreate -q "$vg" "${loops[@]}"
step lvcreate -q -Wn -L 64m -n existing "$vg"
mkdir "$mnt"
step "$VOLFS" mount --vg "$vg" --log-file "$work/volfs.log" "$mnt"
step ls -l "$mnt"
echo "(the LV made by lvcreate is a file: mode 0600, owner root, dated when it was made)"

head -c 20000001 /dev/urandom > "$work/disk.raw"
bold "cp creates an LV; its size is whole extents, the file's exact size is a tag"
step cp "$work/disk.raw" "$mnt/web"
step ls -l "$mnt"
step cmp "$work/disk.raw" "$mnt/web"
step lvs_
tags web

bold "mv renames the LV; mv over an existing file replaces it"
step mv "$mnt/web" "$mnt/web-prod"
step lvs_
step mv "$mnt/web-prod" "$mnt/existing"
step ls -l "$mnt"
step lvs_

bold "Names LVM does not accept are escaped"
step touch "$mnt/disk of vm:1"
step ls -l "$mnt"
step lvs_

bold "truncate grows and shrinks the LV"
step truncate -s 200M "$mnt/existing"
step ls -l "$mnt/existing"
step lvs_
step truncate -s 10000000 "$mnt/existing"
step ls -l "$mnt/existing"
step lvs_

bold "statfs is the volume group's size and free space"
step df -h "$mnt"
step vgs "$vg"

bold "rm removes the LV"
step rm "$mnt/disk of vm:1"
step ls -l "$mnt"
step lvs_

bold "lvcreate by another tool: the file appears within a second"
step lvcreate -q -Wn -L 8m -n from-lvcreate "$vg"
sleep 1
step ls -l "$mnt"

bold "A thin pool: files are thin LVs, a 100 GiB file on a 256 MiB pool"
step "$VOLFS" umount "$mnt"
step lvcreate -q --type thin-pool -L 256m -n pool "$vg"
step "$VOLFS" mount --vg "$vg" --thin-pool pool --log-file "$work/volfs.log" "$mnt"
step truncate -s 100G "$mnt/big"
step cp "$work/disk.raw" "$mnt/small"
sleep 1
step ls -ls "$mnt"
echo "(the first column, st_blocks, is what the pool really holds for each file; it follows lvs within a second)"
step lvs -o lv_name,lv_size,segtype,pool_lv,data_percent --units m "$vg"
step df -h "$mnt"

step "$VOLFS" umount "$mnt"
echo
echo "(removing the volume group and the loop devices)"
