#!/bin/bash
# Installs what bench/run.sh needs (Debian 12, root). Idempotent: runs
# apt-get (and apt-get update) only when a tool is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# command -> Debian package
declare -A pkg_of=(
  [fio]=fio
  [jq]=jq
  [qemu-img]=qemu-utils
  [qemu-storage-daemon]=qemu-system-common
  [mkfs.ext4]=e2fsprogs
  [losetup]=mount
  [blockdev]=util-linux
  [findmnt]=util-linux
  [flock]=util-linux
  [timeout]=coreutils
)
need=()
for cmd in "${!pkg_of[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    p=${pkg_of[$cmd]}
    [[ " ${need[*]} " == *" $p "* ]] || need+=("$p")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench/install-deps.sh: installing ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
