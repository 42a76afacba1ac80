#!/bin/bash
# vmtest.sh - run the suites that need device-mapper and LVM, each in
# throw-away QEMU guests (integration/vm/vmrun.sh), several guests at once.
#
# The test binaries are built here; a guest runs one binary (in its
# package's directory, as go test would). integration/lvm is the long
# suite: its tests are dealt round-robin into $VMTEST_SHARDS jobs. The jobs
# run $VMTEST_JOBS at a time (a TCG guest keeps one host core busy, so the
# default is the number of cores). Each job's output is printed whole when
# it ends, and every job runs even when another fails.
#
# Each test binary stops itself (with a goroutine dump) after
# $VMTEST_TIMEOUT; the guest is killed $VMTEST_GRACE later, after the guest
# has printed its process list (see vmrun.sh -t and the guest's watchdog).
#
# Usage: scripts/vmtest.sh [-run REGEXP]   (VOLFS_BIN must name the volfs
# binary the integration tests drive; make vmtest sets it)
set -euo pipefail

# One job (run by xargs below): NAME PKG DISKS REGEXP.
job() {
  local name=$1 pkg=$2 disks=$3 re=$4 bin d args=() rc=0 t0=$SECONDS
  bin=$W/${name%-[0-9]*}.test
  [ -f "$bin" ] || bin=$W/$name.test
  for ((d = 0; d < disks; d++)); do args+=(-D 4G); done
  (cd "$pkg" && "$ROOT/integration/vm/vmrun.sh" -t "$VMTIMEOUT" "${args[@]}" -e "VOLFS_BIN=$VOLFS_BIN" -- \
      "$bin" -test.v -test.count=1 -test.timeout "$TIMEOUT" -test.run "$re") > "$W/$name.out" 2>&1 || rc=$?
  {
    echo "=== vmtest job $name ($pkg, -run '$re'): exit $rc after $((SECONDS - t0)) s"
    cat "$W/$name.out"
  } | (flock 9; cat) 9>>"$W/print.lock"
  echo "$rc" > "$W/$name.rc"
}
if [ "${1:-}" = --job ]; then shift; job "$@"; exit 0; fi

SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD
GO=${GO:-go}
JOBS=${VMTEST_JOBS:-$(nproc)}
SHARDS=${VMTEST_SHARDS:-4}
TIMEOUT=${VMTEST_TIMEOUT:-20m}
GRACE=${VMTEST_GRACE:-300}
RUN=''
if [ "${1:-}" = -run ]; then RUN=$2; shift 2; fi
[ $# -eq 0 ] || { echo "usage: $0 [-run REGEXP]" >&2; exit 2; }
[ -n "${VOLFS_BIN:-}" ] || { echo "vmtest: set VOLFS_BIN to the volfs binary (make vmtest does)" >&2; exit 2; }
VOLFS_BIN=$(readlink -f "$VOLFS_BIN")

secs() {   # a Go duration of whole minutes or seconds, in seconds
  case $1 in
    *m) echo $(( ${1%m} * 60 ));;
    *s) echo "${1%s}";;
    *) echo "vmtest: VMTEST_TIMEOUT=$1: want e.g. 20m or 900s" >&2; exit 2;;
  esac
}
VMTIMEOUT=$(( $(secs "$TIMEOUT") + GRACE ))

W=$(mktemp -d "${TMPDIR:-/tmp}/volfs-vmtest.XXXXXX")
trap 'rm -rf "$W"' EXIT

# name package disks: one line per package.
# The longest first: jobs start in this order.
PKGS=(
  "integration-lvm ./integration/lvm 3"
  "volmap-lvm ./volmap/lvm 1"
  "integration-vm ./integration/vm 1"
)
for p in "${PKGS[@]}"; do
  read -r name pkg _ <<<"$p"
  "$GO" test -c -o "$W/$name.test" "$pkg"
done

# A job: NAME PKG DISKS REGEXP.
: > "$W/jobs"
for p in "${PKGS[@]}"; do
  read -r name pkg disks <<<"$p"
  if [ "$name" != integration-lvm ]; then
    printf '%s %s %s %s\n' "$name" "$pkg" "$disks" "${RUN:-.}" >> "$W/jobs"
    continue
  fi
  mapfile -t tests < <(cd "$pkg"; "$W/$name.test" -test.list "${RUN:-.}" | grep '^Test' || true)
  for ((s = 0; s < SHARDS; s++)); do
    re=''
    for ((i = s; i < ${#tests[@]}; i += SHARDS)); do re+="${re:+|}${tests[i]}"; done
    [ -z "$re" ] || printf '%s %s %s %s\n' "$name-$s" "$pkg" "$disks" "^($re)\$" >> "$W/jobs"
  done
done

export W ROOT VMTIMEOUT VOLFS_BIN TIMEOUT
xargs -P "$JOBS" -L 1 "$SELF" --job < "$W/jobs"

fail=0
echo "=== vmtest summary"
while read -r name pkg _ _; do
  rc=$(cat "$W/$name.rc" 2>/dev/null || echo missing)
  if [ "$rc" = 0 ]; then echo "ok   $name ($pkg)"; else echo "FAIL $name ($pkg): exit $rc"; fail=1; fi
done < "$W/jobs"
exit "$fail"
