#!/bin/bash
# bench/scale.sh - the scale rows of the volfs benchmark (issue #13, README
# "A thousand images"):
#   guest  in one QEMU TCG guest (integration/vm/vmrun.sh, real LVM):
#          TestScale: a VG of 1,000 LVs; `ls -l` of the mount cold, warm and
#          with the listing fresh, against one `lvs` of the VG; `stat` of
#          one file; the FUSE requests of one `ls -l`; server RSS per file.
#          TestScaleConcurrentCreate: BENCH_SCALE_FILES small images copied
#          in, 8 cp at a time, against the same lvm commands (lvcreate,
#          lvresize, lvchange) run one after another by lvm alone.
#   host   TestScaleListing (fs/): `ls -l` of 1,000 files through the fs
#          layer with an in-memory driver (volfs's own cost, no lvm), cold
#          and warm, BENCH_REPEAT times; the Go heap per file.
# The tests log their figures as "BENCH guest|host key=value ..." lines
# (internal/testutil.Bench); this script turns them into records and
# bench/report.jq renders the scale table. Guest figures come from one run
# on a TCG guest (1 vCPU): compare them with each other (ls -l against
# lvs), not with a real machine.
#
# bench/run.sh calls it after the device jobs (BENCH_SCALE=0 there skips
# it) with BENCH_RECORDS and BENCH_RAWDIR set: the records join the run's.
# Run alone (as root) it writes bench/results/raw/RUN/ and prints its table.
#
# Environment:
#   BENCH_SCALE_FILES=20  files TestScaleConcurrentCreate copies in (about
#                         15 s each in a guest on a loaded host, and as much
#                         again for lvm alone); 0 skips that test
#   BENCH_SCALE_GUEST=1   0: host rows only (no guest)
#   BENCH_REPEAT=N        repetitions of the host test (default 3)
#   VOLFS=path            volfs binary the guest runs (default bin/volfs,
#                         built if missing)
#   BENCH_RECORDS, BENCH_RAWDIR  set by bench/run.sh
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
export PATH=$PATH:/usr/local/go/bin

files=${BENCH_SCALE_FILES:-20}
guest=${BENCH_SCALE_GUEST:-1}
repeat=${BENCH_REPEAT:-3}
[[ $files =~ ^[0-9]+$ ]] || { echo "BENCH_SCALE_FILES must be a number" >&2; exit 2; }
[[ $guest =~ ^[01]$ ]] || { echo "BENCH_SCALE_GUEST must be 0 or 1" >&2; exit 2; }
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPEAT must be a positive integer" >&2; exit 2; }

log() { printf '[%4ds] scale: %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts, the guest's disks)"
command -v jq >/dev/null || "$here/install-deps.sh"

standalone=0
if [[ -z ${BENCH_RECORDS:-} ]]; then
  standalone=1
  exec 9>/run/volfs-bench.lock
  flock -n 9 || die "a benchmark is running (/run/volfs-bench.lock)"
  rawdir=$here/results/raw/$(date -u +%Y%m%dT%H%M%SZ)-scale
  mkdir -p "$rawdir"
  records=$rawdir/records.jsonl
  : >"$records"
else
  records=$BENCH_RECORDS rawdir=${BENCH_RAWDIR:?BENCH_RAWDIR must be set with BENCH_RECORDS}
fi
work=$(mktemp -d /tmp/volfs-bench-scale.XXXXXX)
trap 'rm -rf -- "$work"' EXIT
failures=0

record() { # rep where job value
  printf '{"rep":%d,"dev":"%s","side":"scale","job":"%s","metric":"v","value":%s}\n' "$@" >>"$records"
}
number() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; }

# bench_records rep log: a record per key=value of the log's BENCH lines
bench_records() {
  local rep=$1 where kvs kv n=0
  while read -r _ where kvs; do
    for kv in $kvs; do
      number "${kv#*=}" || { log "ignored $kv in $2 (not a number)"; continue; }
      record "$rep" "$where" "${kv%%=*}" "${kv#*=}"
      n=$((n + 1))
    done
  done < <(grep -o 'BENCH \(guest\|host\) .*' "$2" || true)
  echo "$n"
}

# --- host: the fs layer alone ---------------------------------------------------------
log "host: TestScaleListing x$repeat"
(cd "$repo" && go test -c -o "$work/fs.test" ./fs/)
for ((rep = 1; rep <= repeat; rep++)); do
  out=$rawdir/scale-host-$rep.log
  if ! "$work/fs.test" -test.run '^TestScaleListing$' -test.count=1 -test.v >"$out" 2>&1; then
    log "host r$rep: TestScaleListing FAILED (see $out)"
    failures=$((failures + 1))
  fi
  log "host r$rep: $(bench_records "$rep" "$out") figures; $(grep -o 'ls -l (warm, run 3)[^;]*' "$out" || true)"
done

# --- guest: real LVM ---------------------------------------------------------------------
if [[ $guest == 1 ]]; then
  volfs=${VOLFS:-$repo/bin/volfs}
  if [[ ! -x $volfs ]]; then
    log "building volfs"
    (cd "$repo" && go build -o "$work/volfs" ./cmd/volfs)
    volfs=$work/volfs
  fi
  out=$rawdir/scale-guest.log
  log "guest: TestScale, then TestScaleConcurrentCreate (VOLFS_SCALE_FILES=$files); log $out"
  # One guest, the test binary run once per test: TestScale first, on a
  # fresh guest (go test would run the other first, in file order). The
  # guest reads the host's root read-only: it runs both binaries in place.
  (cd "$repo" && go test -c -o "$work/lvm.test" ./integration/lvm/)
  t=$work/lvm.test
  cmd="$t -test.v -test.count=1 -test.timeout 30m -test.run '^TestScale\$'; s=\$?"
  ((files > 0)) && cmd+="; $t -test.v -test.count=1 -test.timeout 60m -test.run '^TestScaleConcurrentCreate\$' || s=1"
  if ! (cd "$repo/integration/lvm" && "$repo/integration/vm/vmrun.sh" -t 5400 -D 4G -D 4G -D 4G \
    -e "VOLFS_BIN=$volfs" -e "VOLFS_SCALE_FILES=$files" -- bash -c "$cmd; exit \$s") >"$out" 2>&1; then
    log "guest: FAILED (see $out)"
    failures=$((failures + 1))
  fi
  log "guest: $(bench_records 1 "$out") figures; $(grep -o 'volfs / lvm alone: [0-9.]*' "$out" || echo "no create figures")"
  if ((files > 0)) && ! grep -q 'BENCH guest create_files=' "$out"; then
    log "guest: no figures of TestScaleConcurrentCreate in $out"
    failures=$((failures + 1))
  fi
fi

if [[ $standalone == 1 ]]; then
  {
    echo "# volfs benchmark: scale rows"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); took $((SECONDS / 60)) min $((SECONDS % 60)) s; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- volfs: git $(git -C "$repo" describe --always --dirty --abbrev=12 2>/dev/null || echo unknown); host kernel $(uname -r)"
    echo
    jq -rn --slurpfile r "$records" -f "$here/report.jq"
  } >"$rawdir/results.md"
  cat "$rawdir/results.md"
fi
log "done; $failures failure(s); raw results in $rawdir"
((failures == 0))
