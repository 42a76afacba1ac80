#!/bin/bash
# volfs benchmark (issue #4): the same block device measured side by side as
#   raw    the loop device itself (the limit)
#   volfs  the volfs file of that device (FUSE over io_uring where the
#          kernel has it), and "volfsdev": the same with --io-uring=false
#          (requests through /dev/fuse), to measure that lever
#   qsd    the device exported as a file by qemu-storage-daemon's FUSE export
#   ext4   a preallocated raw image on ext4 made on that device (O_DIRECT,
#          QEMU cache=none style), and a sparse one ("ext4s": first writes
#          allocate) for the write jobs
# on two loop devices: one over a file on /dev/shm (shows volfs's own cost),
# one over a sparse file under /var/tmp with --direct-io=on (a real disk).
#
# Then the scale rows (bench/scale.sh, issue #13): `ls -l` of a VG of 1,000
# LVs cold / warm / with the listing fresh against one `lvs`, `stat`, FUSE
# requests and memory per file, and small images copied in at once against
# lvm alone, in a QEMU TCG guest (one run, about 3 min plus 30 s per
# BENCH_SCALE_FILES); and `ls -l` of 1,000 files through the fs layer on the
# host. They get a table of their own.
#
# Every figure is the median over BENCH_REPEAT repetitions with its range,
# and its ratio to the raw device measured in the same run. The tables go
# to stdout and to bench/results/latest.md (full runs only); raw fio JSON,
# per-measurement records and logs stay under bench/results/raw/RUN/.
#
# Environment:
#   BENCH_QUICK=1        smoke test: one repetition, short jobs, fewer jobs
#   BENCH_REPEAT=N       repetitions (default 3; 1 with BENCH_QUICK)
#   BENCH_RUNTIME=2s     fio runtime of each time-based job (fio units)
#   BENCH_RAMP=500ms     fio ramp time before each time-based job
#   BENCH_DEVICES="shm disk"          which loop devices
#   BENCH_SIDES="raw volfs volfsdev qsd ext4"  which sides
#   BENCH_JOBS_SHM / BENCH_JOBS_DISK  job lists (see job_label below)
#   BENCH_DEV_MIB=1280   loop device size (the jobs use its first GiB)
#   VOLFS=path           volfs binary (default bin/volfs, built if missing)
#   BENCH_SCALE=0        skip the scale rows (default 1)
#   BENCH_SCALE_GUEST=0  scale rows of the host only, no guest (default 1;
#                        0 with BENCH_QUICK)
#   BENCH_SCALE_FILES=N  images copied in at once in the guest (default 20;
#                        0 skips that test)
#
# A bash script, not a Go program: nearly every step is an external tool
# (losetup, mkfs, mount, fio, qemu-storage-daemon, cp, qemu-img), which a
# shell drives most directly and a trap cleans up; it keeps a benchmark
# harness out of the Go module (go vet/test/staticcheck stay as they are);
# jq parses fio's JSON and bench/report.jq renders the table.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

# --- settings ---------------------------------------------------------------
quick=${BENCH_QUICK:-0}
declare -A JOBS
if [[ $quick == 1 ]]; then
  repeat=${BENCH_REPEAT:-1}
  runtime=${BENCH_RUNTIME:-1s}
  ramp=${BENCH_RAMP:-500ms}
  JOBS[shm]=${BENCH_JOBS_SHM:-"seqread seqwrite randread32 randwrite32 randread1 syncwrite1 cpin cpout cvin cvout"}
  JOBS[disk]=${BENCH_JOBS_DISK:-"seqread randwrite32 syncwrite1 cpin cpout"}
else
  repeat=${BENCH_REPEAT:-3}
  runtime=${BENCH_RUNTIME:-2s}
  ramp=${BENCH_RAMP:-500ms}
  JOBS[shm]=${BENCH_JOBS_SHM:-"seqread seqwrite randread32 randwrite32 randread32u randwrite32u randread1 randwrite1 syncwrite1 bufread cpin cpout cvin cvout"}
    # the disk device repeats what a real device changes (its latency hides
  # per-request overhead); buffered reads and qemu-img show on shm
  JOBS[disk]=${BENCH_JOBS_DISK:-"seqread seqwrite randread32 randwrite32 randread1 syncwrite1 cpin cpout"}
fi
devices=${BENCH_DEVICES:-"shm disk"}
scale=${BENCH_SCALE:-1}
[[ $quick == 1 ]] && export BENCH_SCALE_GUEST=${BENCH_SCALE_GUEST:-0}
sides=${BENCH_SIDES:-"raw volfs volfsdev qsd ext4"}
dev_mib=${BENCH_DEV_MIB:-1280}
region=1g            # fio works on the first GiB of every side
image_bytes=$((1 << 30))
fio_timeout=300      # seconds; a hung side fails its job instead of the run

[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPEAT must be a positive integer" >&2; exit 2; }
[[ $scale =~ ^[01]$ ]] || { echo "BENCH_SCALE must be 0 or 1" >&2; exit 2; }
for d in $devices; do [[ $d == shm || $d == disk ]] || { echo "unknown device kind $d" >&2; exit 2; }; done
known_jobs=" seqread seqwrite randread32 randwrite32 randread32u randwrite32u randread1 randwrite1 syncwrite1 bufread cpin cpout cvin cvout "
for j in ${JOBS[shm]} ${JOBS[disk]}; do
  [[ $known_jobs == *" $j "* ]] || { echo "unknown job $j (known:$known_jobs)" >&2; exit 2; }
done
for s in $sides; do [[ $s =~ ^(raw|volfs|volfsdev|qsd|ext4)$ ]] || { echo "unknown side $s" >&2; exit 2; }; done

log() { printf '[%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- preflight ----------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "run as root (loop devices, mounts)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing (modprobe fuse)"
for t in fio jq qemu-img qemu-storage-daemon mkfs.ext4 losetup blockdev findmnt flock timeout; do
  if ! command -v "$t" >/dev/null 2>&1; then
    "$here/install-deps.sh"
    break
  fi
done

exec 9>/run/volfs-bench.lock
flock -n 9 || die "another bench/run.sh is running (/run/volfs-bench.lock)"

# --- everything this run creates, and its cleanup ------------------------------
loops=() volfs_mnts=() qsd_exports=() ext4_mnts=() tmpdirs=()
declare -A live_pids=() # server pid -> its comm, while it runs

# stop_pid ends a server this run started (checked by its comm, so a
# recycled pid is never signalled) and waits up to 10 s for it to exit.
stop_pid() {
  local p=$1 i
  [[ -n ${live_pids[$p]:-} ]] || return 0
  if [[ $(cat "/proc/$p/comm" 2>/dev/null) == "${live_pids[$p]}" ]]; then
    kill -TERM "$p" 2>/dev/null
    for ((i = 0; i < 100; i++)); do alive "$p" || break; sleep 0.1; done
    if alive "$p" && [[ $(cat "/proc/$p/comm" 2>/dev/null) == "${live_pids[$p]}" ]]; then
      kill -KILL "$p" 2>/dev/null
    fi
  fi
  unset "live_pids[$p]"
}

cleanup() {
  local rc=$? m p l d
  trap - EXIT INT TERM HUP
  set +eu
  for m in "${volfs_mnts[@]}"; do
    if findmnt -rn --mountpoint "$m" >/dev/null; then
      timeout 70 "$volfs" umount --timeout 60s "$m" >/dev/null 2>&1 || umount -l "$m"
    fi
  done
  for p in "${!live_pids[@]}"; do stop_pid "$p"; done
  for m in "${qsd_exports[@]}" "${ext4_mnts[@]}"; do
    if findmnt -rn --mountpoint "$m" >/dev/null; then umount "$m" 2>/dev/null || umount -l "$m"; fi
  done
  for l in "${loops[@]}"; do losetup -d "$l"; done
  for d in "${tmpdirs[@]}"; do rm -rf -- "$d"; done
  if ((rc != 0)); then log "exit status $rc; cleaned up"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# volfs binary: bin/volfs (make bench builds it), else build one for this run.
work=$(mktemp -d /tmp/volfs-bench.XXXXXX); tmpdirs+=("$work")
volfs=${VOLFS:-$repo/bin/volfs}
if [[ ! -x $volfs ]]; then
  export PATH=$PATH:/usr/local/go/bin
  log "building volfs"
  (cd "$repo" && go build -o "$work/volfs" ./cmd/volfs)
  volfs=$work/volfs
else
  # a private copy: a rebuild of bin/volfs during the run changes nothing
  cp "$volfs" "$work/volfs"
  volfs=$work/volfs
fi

shmdir=$(mktemp -d /dev/shm/volfs-bench.XXXXXX); tmpdirs+=("$shmdir")
diskdir=$(mktemp -d /var/tmp/volfs-bench.XXXXXX); tmpdirs+=("$diskdir")
avail_mib() { df -Pm "$1" | awk 'NR == 2 { print $4 }'; }
(($(avail_mib /dev/shm) > dev_mib + 2 * 1024 + dev_mib + 512)) || die "not enough space on /dev/shm"
(($(avail_mib /var/tmp) > dev_mib + 512)) || die "not enough space under /var/tmp"

run_id=$(date -u +%Y%m%dT%H%M%SZ)
rawdir=$here/results/raw/$run_id
mkdir -p "$rawdir"
records=$rawdir/records.jsonl
: >"$records"
failures=0
clk_tck=$(getconf CLK_TCK)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- devices ----------------------------------------------------------------------
declare -A DEV BACK DIRTY
make_device() {
  local kind=$1 file dev
  case $kind in
    shm) file=$shmdir/dev.img ;;
    disk) file=$diskdir/dev.img ;;
  esac
  truncate -s "${dev_mib}M" "$file"
  if [[ $kind == disk ]]; then
    dev=$(losetup --direct-io=on --find --show "$file")
  else
    dev=$(losetup --find --show "$file")
  fi
  loops+=("$dev")
  DEV[$kind]=$dev BACK[$kind]=$file
  assert_ours "$dev"
  log "$kind: $dev over $file (${dev_mib} MiB, loop dio=$(cat "/sys/block/${dev#/dev/}/loop/dio"))"
  prefill "$kind"
}

# assert_ours refuses any device but a loop device this run attached to its
# own backing file.
assert_ours() {
  local dev=$1 l ok=0
  for l in "${loops[@]}"; do [[ $l == "$dev" ]] && ok=1; done
  [[ $ok == 1 && $dev =~ ^/dev/loop[0-9]+$ ]] || die "refusing to touch $dev: not a loop device of this run"
  local back
  back=$(losetup -nO BACK-FILE "$dev" | sed 's/[[:space:]]*$//')
  [[ $back == "${BACK[shm]:-}" || $back == "${BACK[disk]:-}" ]] || die "refusing to touch $dev: backed by $back"
}

# prefill writes the whole device with non-zero data: reads hit allocated
# blocks on every side, qemu-img finds no zero blocks to skip, and the disk
# backing file is allocated before any side is measured.
prefill() {
  local dev=${DEV[$1]}
  assert_ours "$dev"
  fio --name=prefill --filename="$dev" --rw=write --bs=1M --direct=1 --ioengine=libaio \
    --iodepth=16 --output=/dev/null >/dev/null
  DIRTY[$1]=0
}

# alive: the process exists and is not a zombie (an orphaned server may wait
# a while for its reaper).
alive() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [[ ${s:0:1} != Z ]]
}
# sectors read + written (shell arithmetic: the counters run past 2^32 on a
# long-used loop device, where awk prints a sum in exponent notation)
dev_sectors() {
  local f
  read -r -a f <"/sys/block/${1#/dev/}/stat"
  echo $((f[2] + f[6]))
}
proc_ticks() {
  local s f
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  read -r -a f <<<"${s##*) }"
  echo $((f[11] + f[12]))
}

# --- records ------------------------------------------------------------------------
record() { # rep kind side job metric value
  printf '{"rep":%d,"dev":"%s","side":"%s","job":"%s","metric":"%s","value":%s}\n' "$@" >>"$records"
}

# --- jobs -----------------------------------------------------------------------------
is_write_job() { [[ $1 =~ ^(seqwrite|randwrite32|randwrite32u|randwrite1|syncwrite1)$ ]]; }

fio_args() { # job -> fio arguments of that job
  local tb=(--time_based "--runtime=$runtime" "--ramp_time=$ramp")
  local r4=(--bs=4k --norandommap --randrepeat=0)
  case $1 in
    seqread) echo --rw=read --bs=1M --ioengine=libaio --iodepth=16 --direct=1 "${tb[@]}" ;;
    seqwrite) echo --rw=write --bs=1M --ioengine=libaio --iodepth=16 --direct=1 "${tb[@]}" ;;
    randread32) echo --rw=randread "${r4[@]}" --ioengine=libaio --iodepth=32 --direct=1 "${tb[@]}" ;;
    randwrite32) echo --rw=randwrite "${r4[@]}" --ioengine=libaio --iodepth=32 --direct=1 "${tb[@]}" ;;
    randread32u) echo --rw=randread "${r4[@]}" --ioengine=io_uring --iodepth=32 --direct=1 "${tb[@]}" ;;
    randwrite32u) echo --rw=randwrite "${r4[@]}" --ioengine=io_uring --iodepth=32 --direct=1 "${tb[@]}" ;;
    randread1) echo --rw=randread "${r4[@]}" --ioengine=libaio --iodepth=1 --direct=1 "${tb[@]}" ;;
    randwrite1) echo --rw=randwrite "${r4[@]}" --ioengine=libaio --iodepth=1 --direct=1 "${tb[@]}" ;;
    syncwrite1) echo --rw=randwrite "${r4[@]}" --ioengine=libaio --iodepth=1 --direct=1 --fdatasync=1 "${tb[@]}" ;;
    # one pass through the page cache (fio invalidates it first): a second
    # pass would measure memory
    bufread) echo --rw=read --bs=1M --ioengine=psync --direct=0 --invalidate=1 ;;
    *) return 1 ;;
  esac
}

# fio_metrics prints "metric value" lines for a job from fio's JSON.
fio_metrics() { # job json
  sed -n '/^{/,$p' "$2" | jq -r --arg job "$1" '
    .jobs[0] as $j
    | def p99($d): (($d.lat_ns.percentile // $d.clat_ns.percentile)["99.000000"]) / 1000;
    if ($j.error // 0) != 0 then "error \($j.error)"
    elif ($job | test("^(seqread|seqwrite|bufread)$")) then "MBps \(($j.read.bw_bytes + $j.write.bw_bytes) / 1e6)"
    elif ($job | test("32")) then "kIOPS \(($j.read.iops + $j.write.iops) / 1000)"
    elif $job == "syncwrite1" then "IOPS \($j.write.iops)", "sync_p99_us \(p99($j.sync))"
    else (if ($job | test("read")) then $j.read else $j.write end) as $d
      | "lat_mean_us \($d.lat_ns.mean / 1000)", "lat_p99_us \(p99($d))"
    end'
}

drop_cache() { # file or device: drop its clean page cache
  if [[ -b $1 ]]; then blockdev --flushbufs "$1"; else dd if="$1" iflag=nocache count=0 status=none; fi
}

# copy_job runs one cp/qemu-img job and prints "MBps value" and "s value".
copy_job() { # job target mode(dev|new|prealloc)
  local job=$1 target=$2 mode=$3 src=$shmdir/src.img dst t0 t1 bytes n=()
  [[ $mode == prealloc || $mode == dev ]] && n=(-n)
  case $job in
    cpin | cvin) dst=$target bytes=$image_bytes
      [[ $mode == new ]] && rm -f -- "$dst" ;;
    cpout | cvout) dst=$shmdir/out.img
      rm -f -- "$dst"; drop_cache "$target" ;;
  esac
  t0=$(date +%s%N)
  case $job in
    cpin) cp -- "$src" "$dst" && sync -- "$dst" ;;
    cpout) cp -- "$target" "$dst" ;;
    cvin) qemu-img convert -q -f raw -O raw -t none "${n[@]}" "$src" "$dst" ;;
    cvout) qemu-img convert -q -f raw -O raw -T none "$target" "$dst" ;;
  esac || return 1
  t1=$(date +%s%N)
  if [[ $job == cpout || $job == cvout ]]; then
    bytes=$(stat -c %s "$dst")
    rm -f -- "$dst"
  fi
  awk -v b="$bytes" -v ns=$((t1 - t0)) 'BEGIN { printf "MBps %.6g\ns %.6g\n", b / 1e6 / (ns / 1e9), ns / 1e9 }'
}

# run_job measures one job on one side and records its metrics.
run_job() { # rep kind side job target spid copymode
  local rep=$1 kind=$2 side=$3 job=$4 target=$5 spid=$6 mode=${7:-dev}
  local dev=${DEV[$kind]} out=$rawdir/r$1-$2-$3-$4 c0=0 s0=0 metrics ok=1 m v summary=""
  if [[ -n $spid ]]; then c0=$(proc_ticks "$spid") s0=$(dev_sectors "$dev"); fi
  if [[ $job =~ ^(cpin|cpout|cvin|cvout)$ ]]; then
    if ! metrics=$(copy_job "$job" "$target" "$mode" 2>"$out.err"); then ok=0; fi
  else
    local -a args
    read -r -a args <<<"$(fio_args "$job")"
    if ! timeout -k 10 "$fio_timeout" fio --name="$job" --filename="$target" --size="$region" \
      --lat_percentiles=1 --output-format=json --output="$out.json" "${args[@]}" 2>"$out.err"; then
      ok=0
    fi
    if [[ -s $out.json ]]; then metrics=$(fio_metrics "$job" "$out.json" 2>>"$out.err") || ok=0; fi
  fi
  if [[ $ok == 1 && $metrics != error* ]]; then
    while read -r m v; do
      record "$rep" "$kind" "$side" "$job" "$m" "$v"
      [[ $m == s ]] || summary+=" $m=$(printf '%.4g' "$v")"
    done <<<"$metrics"
  else
    ok=0
  fi
  if [[ -n $spid ]]; then
    local c1 s1
    c1=$(proc_ticks "$spid") s1=$(dev_sectors "$dev")
    if ((s1 - s0 >= 2 * 1024)); then # at least 1 MiB moved
      v=$(awk -v t=$((c1 - c0)) -v hz="$clk_tck" -v s=$((s1 - s0)) \
        'BEGIN { printf "%.6g", t / hz * 1000 / (s * 512 / 2^30) }')
      record "$rep" "$kind" "$side" "$job" cpu_ms_per_GiB "$v"
      summary+=" server_cpu=${v}ms/GiB"
    fi
    if ! alive "$spid"; then
      log "$kind r$rep $side: the server (pid $spid) has died"
      ok=0
    fi
  fi
  if [[ $ok == 1 ]]; then
    log "$kind r$rep $side $job:$summary"
  else
    failures=$((failures + 1))
    record "$rep" "$kind" "$side" "$job" fail 1
    log "$kind r$rep $side $job: FAILED ($(head -c 300 "$out.err" 2>/dev/null | tr '\n' ' ')${metrics:-})"
    return 1
  fi
}

# --- sides -------------------------------------------------------------------------------
side_raw() { # rep kind jobs...
  local rep=$1 kind=$2 j; shift 2
  [[ ${DIRTY[$kind]} == 1 ]] && prefill "$kind"
  assert_ours "${DEV[$kind]}"
  for j in "$@"; do run_job "$rep" "$kind" raw "$j" "${DEV[$kind]}" "" || true; done
}

side_volfs() { volfs_side volfs "" "$@"; }
side_volfsdev() { volfs_side volfsdev --io-uring=false "$@"; }

volfs_side() { # side flag rep kind jobs...
  local side=$1 flag=$2 rep=$3 kind=$4 j; shift 4
  local dev=${DEV[$kind]} mnt=$work/$side-$kind pid
  [[ ${DIRTY[$kind]} == 1 ]] && prefill "$kind"
  mkdir -p "$mnt" "$work/state-$kind"
  volfs_mnts+=("$mnt")
  "$volfs" mount --device "$dev" --state-dir "$work/state-$kind" --log-file "$rawdir/$side-$kind.log" ${flag:+"$flag"} "$mnt"
  # the pid file says "PID START" (start time: a reused pid is not the server)
  read -r pid _ 2>/dev/null <"/run/volfs/$(printf %s "$mnt" | sha256sum | cut -c1-16).pid" ||
    pid=$(pgrep -n -f -- "--foreground.* $mnt\$") || die "cannot find the volfs server of $mnt"
  live_pids[$pid]=$(cat "/proc/$pid/comm")
  for j in "$@"; do
    run_job "$rep" "$kind" "$side" "$j" "$mnt/${dev#/dev/}" "$pid" || true
    alive "$pid" || break
  done
  if ! "$volfs" umount --timeout 60s "$mnt"; then
    log "volfs umount $mnt failed; lazy unmount"
    failures=$((failures + 1))
    umount -l "$mnt" || true
  fi
  stop_pid "$pid"
}

side_qsd() {
  local rep=$1 kind=$2 j; shift 2
  local dev=${DEV[$kind]} exp=$work/qsd-$kind.img pid
  [[ ${DIRTY[$kind]} == 1 ]] && prefill "$kind"
  : >"$exp"
  qsd_exports+=("$exp")
  rm -f "$work/qsd.pid"
  qemu-storage-daemon \
    --blockdev "driver=host_device,node-name=n,filename=$dev,cache.direct=on,aio=native" \
    --export "type=fuse,id=e,node-name=n,mountpoint=$exp,writable=on" \
    --daemonize --pidfile "$work/qsd.pid" 2>>"$rawdir/qsd-$kind.log"
  pid=$(cat "$work/qsd.pid")
  live_pids[$pid]=$(cat "/proc/$pid/comm")
  for j in "$@"; do
    run_job "$rep" "$kind" qsd "$j" "$exp" "$pid" || true
    alive "$pid" || break
  done
  stop_pid "$pid"
  if findmnt -rn --mountpoint "$exp" >/dev/null; then umount -l "$exp" || true; fi
}

side_ext4() {
  local rep=$1 kind=$2 j; shift 2
  local dev=${DEV[$kind]} mnt=$work/ext4-$kind img
  assert_ours "$dev"
  DIRTY[$kind]=1
  # nodiscard: a discard would punch the prefilled backing file
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$dev"
  mkdir -p "$mnt"
  ext4_mnts+=("$mnt")
  mount -t ext4 "$dev" "$mnt"
  # The sparse face: each write job on a fresh sparse file; copies into
  # new files (what cp and qemu-img convert make).
  img=$mnt/sparse.img
  for j in "$@"; do
    if is_write_job "$j"; then
      rm -f "$img"; truncate -s "$region" "$img"; sync -f "$mnt"
      run_job "$rep" "$kind" ext4s "$j" "$img" "" || true
    elif [[ $j == cpin || $j == cvin ]]; then
      run_job "$rep" "$kind" ext4s "$j" "$img" "" new || true
    fi
    rm -f "$img"
  done
  # The preallocated face: every job except cp in (cp truncates its target).
  img=$mnt/prealloc.img
  qemu-img create -q -f raw -o preallocation=full "$img" "$region"
  sync -f "$mnt"
  for j in "$@"; do
    [[ $j == cpin ]] && continue
    run_job "$rep" "$kind" ext4 "$j" "$img" "" prealloc || true
  done
  umount "$mnt"
}

# --- the run ---------------------------------------------------------------------------------
log "run $run_id: repeat=$repeat runtime=$runtime ramp=$ramp devices='$devices' sides='$sides'"
log "raw results: $rawdir"
head -c "$image_bytes" /dev/urandom >"$shmdir/src.img"
for kind in $devices; do make_device "$kind"; done

read -r -a side_list <<<"$sides"
nsides=${#side_list[@]}
for ((rep = 1; rep <= repeat; rep++)); do
  for kind in $devices; do
    read -r -a jl <<<"${JOBS[$kind]}"
    # alternate: each repetition rotates the order of the sides
    for ((i = 0; i < nsides; i++)); do
      side=${side_list[$(((i + rep - 1) % nsides))]}
      log "$kind r$rep: $side (load average $(cut -d' ' -f1-3 /proc/loadavg))"
      "side_$side" "$rep" "$kind" "${jl[@]}"
    done
  done
done
if [[ $scale == 1 ]]; then
  log "scale rows (bench/scale.sh; BENCH_SCALE=0 skips them)"
  BENCH_RECORDS=$records BENCH_RAWDIR=$rawdir BENCH_REPEAT=$repeat VOLFS=$volfs "$here/scale.sh" ||
    failures=$((failures + 1))
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$SECONDS

# --- report ---------------------------------------------------------------------------------
volfs_log_issues=0
for f in "$rawdir"/volfs-*.log "$rawdir"/volfsdev-*.log; do
  [[ -e $f ]] || continue
  cnt=$(grep -Ec 'level=(WARN|ERROR)|panic' "$f" || true)
  volfs_log_issues=$((volfs_log_issues + cnt))
done
dev_note() {
  local kind=$1
  case $kind in
    shm) echo "shm: loop device over a ${dev_mib} MiB file on /dev/shm (tmpfs): shows the cost of each stack itself" ;;
    disk) echo "disk: loop device (losetup --direct-io=on, dio=$(cat "/sys/block/${DEV[disk]#/dev/}/loop/dio")) over a ${dev_mib} MiB sparse file under /var/tmp ($(findmnt -no FSTYPE -T /var/tmp) on $(findmnt -no SOURCE -T /var/tmp)), prefilled" ;;
  esac
}
{
  echo "# volfs benchmark"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); run $run_id; took $((elapsed / 60)) min $((elapsed % 60)) s"
  echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), nproc $(nproc)," \
    "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)," \
    "$(sed -n 's/^PRETTY_NAME="*\([^"]*\)"*$/\1/p' /etc/os-release)"
  echo "- load average at start / end: $load_start / $load_end (other work on the machine shows here)"
  echo "- volfs: git $(git -C "$repo" describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)," \
    "binary '$("$volfs" version 2>/dev/null | head -1)'; volfs log lines at WARN/ERROR: $volfs_log_issues;" \
    "volfs transport: $(grep -ho 'serving FUSE requests through io_uring.*' "$rawdir"/volfs-*.log 2>/dev/null | sed 's/ mount=[^ ]*//' | sort -u | head -1 | grep . || echo '/dev/fuse (no io_uring)')"
  echo "- tools: $(fio --version), $(qemu-storage-daemon --version | head -1 | sed 's/ (.*//'), $(qemu-img --version | head -1 | sed 's/ (.*//')"
  echo "- repetitions: $repeat (side order rotated each repetition); fio jobs: ${runtime} after ${ramp} ramp, on the first GiB of each side$([[ $quick == 1 ]] && echo "; QUICK mode")"
  for kind in $devices; do echo "- $(dev_note "$kind"); jobs: ${JOBS[$kind]}"; done
  cat <<'EOF'
- sides: **raw** the loop device; **volfs** its volfs file; **volfs /dev/fuse** the same with `--io-uring=false`; **qsd** `qemu-storage-daemon --blockdev driver=host_device,cache.direct=on,aio=native --export type=fuse,writable=on` (the same device as a file); **ext4 prealloc** a 1 GiB raw image written in full (`qemu-img create -o preallocation=full`) on ext4 made on the device, opened O_DIRECT; **ext4 sparse** a fresh sparse 1 GiB file for each write job (first writes allocate), and new files for cp / qemu-img convert in
- cell: median (min–max over repetitions) and ratio of the medians to raw; ↓ = lower is better; server CPU = utime+stime of the volfs (io_uring) / qemu-storage-daemon process per GiB that reached the device, in ms, and per request of the job's size (4 KiB or 1 MiB; for the fdatasync row per write, its fdatasync included) in µs
- jobs: libaio/io_uring with O_DIRECT; QD1 rows are libaio depth 1; fdatasync after each write; buffered read: one pass, 1 MiB reads, cache dropped first; cp in = 1 GiB random image + fsync; qemu-img convert in `-t none` (`-n` onto devices and the preallocated image); out = the whole file (1.25 GiB for device sides, 1 GiB image for ext4) to tmpfs after dropping the source's cache; copy rows show MB/s [median seconds]
EOF
  echo
  jq -rn --slurpfile r "$records" -f "$here/report.jq"
} >"$rawdir/results.md"

cat "$rawdir/results.md"
if [[ $quick != 1 && $devices == "shm disk" && $sides == "raw volfs volfsdev qsd ext4" ]]; then
  cp "$rawdir/results.md" "$here/results/latest.md"
  log "wrote bench/results/latest.md"
fi
log "done in $((elapsed / 60)) min $((elapsed % 60)) s; $failures failed job(s); raw results in $rawdir"
((failures == 0))
