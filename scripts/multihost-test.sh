#!/bin/bash
# multihost-test.sh - the tests of several hosts on one shared VG
# (integration/multihost): two throw-away QEMU guests boot at once, both
# with the same sparse disk image (vmrun.sh -S: share-rw) and the same
# host directory (vmrun.sh -w) through which their tests meet at named
# steps. Each guest runs the test binary with VOLFS_HOST_ID=1 or 2; the
# tests start sanlock and lvmlockd in their guest. Both outputs are printed
# when both guests have ended; the run passes only if both exit 0.
#
# Usage: scripts/multihost-test.sh [-run REGEXP]
# Environment: VOLFS_BIN (default: bin/volfs, built by make build; make
#   multihost-test builds it), MULTIHOST_TIMEOUT (each test binary's
#   -test.timeout, default 40m; the guests are killed 5 min later),
#   MULTIHOST_DISK (shared image size, default 2G), VOLFS_VM_SCRATCH_DIR
#   (where the image is made, default /var/tmp), GO.
set -euo pipefail

SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD
GO=${GO:-go}
RUN=.
if [ "${1:-}" = -run ]; then RUN=$2; shift 2; fi
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

# The image both guests attach: it must stay a named file while they run
# (each QEMU opens it by name), and goes when this script ends.
IMG=$(mktemp "${VOLFS_VM_SCRATCH_DIR:-/var/tmp}/volfs-multihost.XXXXXX.img")
truncate -s "${MULTIHOST_DISK:-2G}" "$IMG"
mkdir "$W/sync"
"$GO" test -c -o "$W/multihost.test" ./integration/multihost/

t0=$SECONDS
for id in 1 2; do
  (cd integration/multihost && "$ROOT/integration/vm/vmrun.sh" -t "$VMTIMEOUT" -S "$IMG" -w "$W/sync" \
      -e "VOLFS_BIN=$VOLFS_BIN" -e "VOLFS_HOST_ID=$id" -e "VOLFS_SYNC_DIR=$W/sync" -- \
      "$W/multihost.test" -test.v -test.count=1 -test.timeout "$TIMEOUT" -test.run "$RUN") \
      > "$W/host$id.out" 2>&1 &
  PIDS+=($!)
done
rc1=0 rc2=0
wait "${PIDS[0]}" || rc1=$?
wait "${PIDS[1]}" || rc2=$?
PIDS=()
for id in 1 2; do
  rc=$rc1; [ "$id" = 2 ] && rc=$rc2
  echo "=== multihost: host $id: exit $rc"
  cat "$W/host$id.out"
done
echo "=== multihost: host 1 exit $rc1, host 2 exit $rc2, $((SECONDS - t0)) s"
[ "$rc1" = 0 ] && [ "$rc2" = 0 ]
