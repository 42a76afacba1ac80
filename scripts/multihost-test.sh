#!/bin/bash
# multihost-test.sh - the tests of several hosts on one shared VG
# (integration/multihost): two throw-away QEMU guests boot at once, both
# with the same sparse disk image (vmrun.sh -S: share-rw) and the same
# host directory (vmrun.sh -w) through which their tests meet at named
# steps. Each guest runs the test binary with VOLFS_HOST_ID=1 or 2; the
# tests start sanlock and lvmlockd in their guest. Both outputs are printed
# when both guests have ended; the run passes only if both exit 0.
#
# Then, unless MULTIHOST_FAILOVER=0 or -run is given, a second pair of
# guests (a fresh disk) runs TestFailover: host 1 powers its guest off
# while it holds a file, and host 2 measures how long until it can open it
# (about 140 s: sanlock's lease timeout). That phase passes if host 2 exits
# 0 and host 1 got as far as powering off.
#
# Usage: scripts/multihost-test.sh [-run REGEXP]
# Environment: VOLFS_BIN (default: bin/volfs, built by make build; make
#   multihost-test builds it), MULTIHOST_TIMEOUT (each test binary's
#   -test.timeout, default 40m; the guests are killed 5 min later),
#   MULTIHOST_DISK (shared image size, default 2G), MULTIHOST_FAILOVER
#   (0: skip the failover phase), VOLFS_VM_SCRATCH_DIR (where the image is
#   made, default /var/tmp), GO.
set -euo pipefail

SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD
GO=${GO:-go}
RUN=.
FAILOVER=${MULTIHOST_FAILOVER:-1}
if [ "${1:-}" = -run ]; then RUN=$2; FAILOVER=0; shift 2; fi
[ $# -eq 0 ] || { echo "usage: $0 [-run REGEXP]" >&2; exit 2; }
TIMEOUT=${MULTIHOST_TIMEOUT:-40m}
case $TIMEOUT in
  *m) VMTIMEOUT=$(( ${TIMEOUT%m} * 60 + 300 ));;
  *s) VMTIMEOUT=$(( ${TIMEOUT%s} + 300 ));;
  *) echo "multihost: MULTIHOST_TIMEOUT=$TIMEOUT: want e.g. 40m or 2400s" >&2; exit 2;;
esac
VOLFS_BIN=$(readlink -f "${VOLFS_BIN:-bin/volfs}")
[ -x "$VOLFS_BIN" ] || { echo "multihost: no volfs binary at $VOLFS_BIN (make build)" >&2; exit 2; }
for c in sanlock lvmlockd lvmlockctl; do
  command -v "$c" >/dev/null || PATH=$PATH:/usr/sbin:/sbin
  command -v "$c" >/dev/null || { echo "multihost: $c not found; run integration/vm/install-deps.sh" >&2; exit 2; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/volfs-multihost.XXXXXX")
IMG=''
PIDS=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -z "$IMG" ] || rm -f "$IMG"
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$GO" test -c -o "$W/multihost.test" ./integration/multihost/

# pair NAME REGEXP [VAR=VALUE...] boots the two guests over a fresh shared
# image and sync directory, runs the tests matching REGEXP in both, prints
# both outputs, and sets RC1 and RC2 to the guests' exit statuses.
pair() {
  local name=$1 run=$2 id t0 sync
  shift 2
  local extra=()
  for v in "$@"; do extra+=(-e "$v"); done
  # The image both guests attach: it must stay a named file while they
  # run (each QEMU opens it by name), and goes when the pair ends.
  IMG=$(mktemp "${VOLFS_VM_SCRATCH_DIR:-/var/tmp}/volfs-multihost.XXXXXX.img")
  truncate -s "${MULTIHOST_DISK:-2G}" "$IMG"
  sync=$W/sync-$name
  mkdir "$sync"
  t0=$SECONDS
  for id in 1 2; do
    (cd integration/multihost && "$ROOT/integration/vm/vmrun.sh" -t "$VMTIMEOUT" -S "$IMG" -w "$sync" \
        -e "VOLFS_BIN=$VOLFS_BIN" -e "VOLFS_HOST_ID=$id" -e "VOLFS_SYNC_DIR=$sync" "${extra[@]}" -- \
        "$W/multihost.test" -test.v -test.count=1 -test.timeout "$TIMEOUT" -test.run "$run") \
        > "$W/$name-host$id.out" 2>&1 &
    PIDS+=($!)
  done
  RC1=0 RC2=0
  wait "${PIDS[0]}" || RC1=$?
  wait "${PIDS[1]}" || RC2=$?
  PIDS=()
  rm -f "$IMG"
  IMG=''
  for id in 1 2; do
    echo "=== multihost $name: host $id: exit $([ "$id" = 1 ] && echo "$RC1" || echo "$RC2")"
    cat "$W/$name-host$id.out"
  done
  echo "=== multihost $name: host 1 exit $RC1, host 2 exit $RC2, $((SECONDS - t0)) s"
}

pair main "$RUN"
ok=0
[ "$RC1" = 0 ] && [ "$RC2" = 0 ] || ok=1
if [ "$FAILOVER" != 0 ]; then
  pair failover '^TestFailover$' VOLFS_FAILOVER=1
  # Host 1 powers off on purpose: its guest reports no status (125).
  if [ "$RC2" != 0 ] || [ ! -e "$W/sync-failover/fo-dying" ]; then
    echo "=== multihost failover: FAIL (host 2 exit $RC2; host 1 $([ -e "$W/sync-failover/fo-dying" ] && echo "powered off" || echo "did not get to power off"))"
    ok=1
  fi
fi
exit "$ok"
