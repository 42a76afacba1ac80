#!/bin/bash
# vmrun.sh - run one command inside a throw-away QEMU guest (Debian kernel,
# TCG) whose root file system is the HOST root, read-only over virtio-9p
# under a tmpfs overlay: the guest sees the host's lvm2, /lib/modules and the
# freshly built Go test binaries, and every write is discarded at power-off.
# Before the command, the guest loads dm-mod, dm-thin-pool, dm-snapshot, fuse
# and loop and configures LVM for udev-less use (guest-setup.sh). The
# command's exit status becomes this script's exit status.
#
# Usage: vmrun.sh [options] [--] command [args...]
#   -D SIZE   fresh sparse scratch disk of SIZE (e.g. 4G); repeatable. The
#             image is unlinked as soon as it is opened, so nothing is left
#             behind whatever happens to this script.
#   -d FILE   existing raw image FILE as a disk (regular files only: block
#             devices are refused); repeatable; comes before the -D disks.
#             Disk N (0, 1, ... in option order) gets the virtio serial
#             "volfs-scratchN" (/sys/block/vdX/serial in the guest). No other
#             disk is ever attached.
#   -S FILE   as -d, but a disk that another guest opens at the same time
#             (QEMU share-rw=on, no image lock, host page cache shared by
#             both QEMUs: cache=writeback whatever VOLFS_VM_DISK_CACHE says);
#             for tests of several hosts on one VG (scripts/multihost-test.sh)
#   -w DIR    share host DIR read-write at the same path (default: everything
#             is copy-on-write in guest RAM and discarded); repeatable
#   -e NAME   pass host environment variable NAME into the guest; -e NAME=VAL
#             sets it; repeatable. The guest always gets VOLFS_VM=1, the host
#             PATH (plus sbin dirs), HOME=/root and TERM=dumb.
#   -m MB     guest RAM (default 2048)
#   -c N      vCPUs (default 1; under TCG on a 2-core host 1 is faster)
#   -t SECS   hard timeout for the whole VM (default $VOLFS_VM_TIMEOUT or 3000)
#   -a ACCEL  tcg (default) or kvm
#   -k KVER   guest kernel version (default: newest bootable one)
#   -l FILE   save the guest kernel console log to FILE
#   -v        print timing to stderr
# Environment: VOLFS_VM_CACHE (boot artifacts, default /var/tmp/volfs-vm),
#   VOLFS_VM_SCRATCH_DIR (where -D images are created, default /var/tmp),
#   VOLFS_VM_TIMEOUT, VOLFS_VM_APPEND (extra kernel args),
#   VOLFS_VM_DISK_CACHE (QEMU cache= mode of the disks, default unsafe),
#   VOLFS_VM_VERBOSE=1 (as -v).
# As go test's exec wrapper (the command runs in the caller's working dir):
#   go test -exec "$PWD/integration/vm/vmrun.sh -D 4G --" ./integration/vm/
# Exit status: the command's; 124 hard timeout; 125 the guest ended without
# reporting a status (its console log is printed) or setup failed; 2 usage;
# 129/130/143 interrupted by SIGHUP/SIGINT/SIGTERM (QEMU is killed first).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
die() { echo "vmrun: $*" >&2; exit 125; }
usage() { sed -n '/^# Usage:/,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

MEM=2048 CPUS=1 TIMEOUT=${VOLFS_VM_TIMEOUT:-3000} ACCEL=tcg LOG='' KVER=''
VERBOSE=${VOLFS_VM_VERBOSE:-0}
DISKS=() SHARED=() SCRATCH=() RWDIRS=() ENVS=()
safe_path() { [[ $1 =~ ^/[A-Za-z0-9._/+@-]*$ ]]; }   # fits QEMU options and the kernel cmdline
while getopts "d:S:D:w:e:m:c:t:a:k:l:vh" o; do
  case $o in
    d|S) f=$(readlink -f -- "$OPTARG") || { echo "vmrun: -$o $OPTARG: not found" >&2; exit 2; }
       [ -f "$f" ] || { echo "vmrun: -$o $OPTARG: not a regular file (block devices are refused)" >&2; exit 2; }
       safe_path "$f" || { echo "vmrun: -$o $OPTARG: path has unsupported characters" >&2; exit 2; }
       DISKS+=("$f"); if [ "$o" = S ]; then SHARED+=(1); else SHARED+=(0); fi;;
    D) [[ $OPTARG =~ ^[0-9]+[KMGT]?$ ]] || { echo "vmrun: -D $OPTARG: want a size like 4G" >&2; exit 2; }
       SCRATCH+=("$OPTARG");;
    w) f=$(readlink -f -- "$OPTARG") || f=''
       [ -d "$f" ] || { echo "vmrun: -w $OPTARG: not a directory" >&2; exit 2; }
       safe_path "$f" || { echo "vmrun: -w $OPTARG: path has unsupported characters" >&2; exit 2; }
       RWDIRS+=("$f");;
    e) [[ $OPTARG =~ ^[A-Za-z_][A-Za-z0-9_]*(=.*)?$ ]] || { echo "vmrun: -e $OPTARG: bad variable" >&2; exit 2; }
       ENVS+=("$OPTARG");;
    m) MEM=$OPTARG;; c) CPUS=$OPTARG;; t) TIMEOUT=$OPTARG;;
    a) ACCEL=$OPTARG;; k) KVER=$OPTARG;; l) LOG=$OPTARG;; v) VERBOSE=1;;
    *) usage;;
  esac
done
shift $((OPTIND-1))
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || usage
for n in "$MEM" "$CPUS" "$TIMEOUT"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "vmrun: -m/-c/-t want positive integers, got $n" >&2; exit 2; }
done
case $ACCEL in tcg|kvm) ;; *) echo "vmrun: -a: tcg or kvm" >&2; exit 2;; esac
[ $(( ${#DISKS[@]} + ${#SCRATCH[@]} )) -le 16 ] || { echo "vmrun: at most 16 disks" >&2; exit 2; }

for c in qemu-system-x86_64 setpriv flock; do
  command -v "$c" >/dev/null || die "$c not found; run integration/vm/install-deps.sh"
done

T0=$EPOCHREALTIME
INITRD='' KERNEL=''
ART=$("$HERE/mkinitramfs.sh" ${KVER:+-k "$KVER"}) || die "building the guest initramfs failed"
while IFS='=' read -r k v; do
  case $k in INITRD) INITRD=$v;; KERNEL) KERNEL=$v;; KVER) KVER=$v;; esac
done <<< "$ART"
if [ ! -s "$INITRD" ] || [ ! -s "$KERNEL" ]; then die "mkinitramfs.sh gave no usable artifacts"; fi

TMPBASE=${TMPDIR:-/tmp}
# Sweep control dirs of earlier runs that were SIGKILLed (their owner is gone).
for d in "$TMPBASE"/volfs-vm.*; do
  if [ ! -d "$d" ] || [ ! -f "$d/owner" ]; then continue; fi
  pid=$(cat "$d/owner" 2>/dev/null) || continue
  [[ $pid =~ ^[0-9]+$ ]] && ! kill -0 "$pid" 2>/dev/null && rm -rf "$d"
done

QPID='' WPID='' CTL='' PENDING=''
stop_qemu() {
  [ -n "$QPID" ] || return 0
  if kill -0 "$QPID" 2>/dev/null; then
    kill -TERM "$QPID" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
      kill -0 "$QPID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$QPID" 2>/dev/null || true
  fi
  wait "$QPID" 2>/dev/null || true
  QPID=''
}
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  stop_qemu
  if [ -n "$WPID" ]; then kill "$WPID" 2>/dev/null || true; wait "$WPID" 2>/dev/null || true; fi
  [ -z "$PENDING" ] || rm -f "$PENDING"
  [ -z "$CTL" ] || rm -rf "$CTL"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "vmrun: interrupted (SIGINT), stopping the guest" >&2; exit 130' INT
trap 'echo "vmrun: terminated (SIGTERM), stopping the guest" >&2; exit 143' TERM
trap 'echo "vmrun: hangup (SIGHUP), stopping the guest" >&2; exit 129' HUP

CTL=$(mktemp -d "$TMPBASE/volfs-vm.XXXXXX")
echo $$ > "$CTL/owner"
safe_path "$CTL" || die "temp dir $CTL has unsupported characters (check TMPDIR)"

# Scratch disks: sparse files, opened and unlinked at once; QEMU opens them
# through /dev/fd/N, which it inherits.
SCRDIR=${VOLFS_VM_SCRATCH_DIR:-/var/tmp}
for sz in "${SCRATCH[@]}"; do
  PENDING=$(mktemp "$SCRDIR/volfs-vm-scratch.XXXXXX") || die "cannot create a scratch image in $SCRDIR"
  truncate -s "$sz" "$PENDING" || die "cannot size scratch image to $sz"
  exec {fd}<>"$PENDING"
  rm -f "$PENDING"
  PENDING=''
  DISKS+=("/dev/fd/$fd") SHARED+=(0)
done

GUEST_PATH=${PATH:-/usr/bin:/bin}
for p in /usr/local/sbin /usr/sbin /sbin; do
  case ":$GUEST_PATH:" in *":$p:"*) ;; *) GUEST_PATH=$GUEST_PATH:$p;; esac
done
{
  echo '# generated by vmrun.sh; runs in the guest chroot'
  printf 'export PATH=%q HOME=/root TERM=dumb\n' "$GUEST_PATH"
  cat "$HERE/guest-setup.sh"
  for e in "${ENVS[@]}"; do
    if [[ $e == *=* ]]; then
      printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
    elif [ -n "${!e+x}" ]; then
      printf 'export %s=%q\n' "$e" "${!e}"
    fi
  done
  echo 'export VOLFS_VM=1'
  printf 'cd %q || exit 125\n' "$PWD"
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} > "$CTL/cmd.sh"

ARGS=(-machine q35 -nodefaults -no-user-config -display none -no-reboot -monitor none
      -m "$MEM" -smp "$CPUS" -kernel "$KERNEL" -initrd "$INITRD"
      -serial "file:$CTL/console.log"
      # the command's stdout+stderr: a raw virtio-serial port to our stdout
      -device "virtio-serial-pci,id=vser"
      -chardev "stdio,id=out,signal=off"
      -device "virtserialport,bus=vser.0,chardev=out,name=volfs.out"
      -object "rng-random,id=rng0,filename=/dev/urandom" -device "virtio-rng-pci,rng=rng0"
      -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
      -virtfs "local,path=$CTL,mount_tag=volfsctl,security_model=none,multidevs=remap")
case $ACCEL in
  kvm) ARGS+=(-accel kvm -cpu host);;
  *)   ARGS+=(-accel "tcg,thread=multi,tb-size=512" -cpu max);;
esac
RW='' i=0
for d in "${RWDIRS[@]}"; do
  ARGS+=(-virtfs "local,path=$d,mount_tag=volfsrw$i,security_model=none,multidevs=remap")
  RW=$RW${RW:+,}volfsrw$i=$d
  i=$((i+1))
done
i=0
for d in "${DISKS[@]}"; do
  if [ "${SHARED[$i]}" = 1 ]; then
    # Two QEMUs write this image: both go through the host page cache
    # (coherent between processes), flushes are honoured, and neither
    # takes QEMU's image lock.
    ARGS+=(-drive "file=$d,if=none,id=disk$i,format=raw,cache=writeback,aio=threads,discard=unmap,file.locking=off"
           -device "virtio-blk-pci,drive=disk$i,serial=volfs-scratch$i,share-rw=on")
  else
    ARGS+=(-drive "file=$d,if=none,id=disk$i,format=raw,cache=${VOLFS_VM_DISK_CACHE:-unsafe},aio=threads,discard=unmap"
           -device "virtio-blk-pci,drive=disk$i,serial=volfs-scratch$i")
  fi
  i=$((i+1))
done
APPEND="console=ttyS0 panic=-1 loglevel=4 mitigations=off tsc=reliable no_timer_check"
APPEND+=" i8042.nokbd i8042.noaux i8042.nopnp 8250.nr_uarts=1 random.trust_cpu=on"
APPEND+=" volfs.vm=1 volfs.ctl=$CTL${RW:+ volfs.rw=$RW} ${VOLFS_VM_APPEND:-}"
# A minute before the hard timeout the guest prints what every process
# waits on (the console log is shown when the guest is killed).
if [ "$TIMEOUT" -gt 120 ]; then APPEND+=" volfs.dump=$((TIMEOUT - 60))"; fi

# Both children die with this script even if it is SIGKILLed (pdeathsig);
# the sleep is the hard-timeout watchdog.
T1=$EPOCHREALTIME
# QEMU's stdin is a FIFO it holds open itself: it never delivers data or EOF
# (an EOF on stdin would mark the output port disconnected, and the guest's
# writes to it would block forever).
# Its stdout is reopened (a new open file description) where possible: QEMU
# sets O_NONBLOCK on it, which would otherwise leak to our caller (a
# terminal, go test's pipe). Append mode keeps a regular file's contents.
mkfifo "$CTL/stdin"
QOUT=/proc/self/fd/1
if ! (: >>"$QOUT") 2>/dev/null; then QOUT=/dev/stdout; fi   # e.g. a socket
setpriv --pdeathsig KILL -- qemu-system-x86_64 "${ARGS[@]}" -append "$APPEND" <>"$CTL/stdin" >>"$QOUT" &
QPID=$!
setpriv --pdeathsig KILL -- sleep "$TIMEOUT" </dev/null >/dev/null 2>&1 &
WPID=$!
FIN='' st=0
wait -n -p FIN "$QPID" "$WPID" || st=$?
TIMED_OUT=0
if [ "$FIN" = "$WPID" ]; then
  WPID='' TIMED_OUT=1
  stop_qemu
elif [ "$FIN" = "$QPID" ]; then
  QPID=''
  kill "$WPID" 2>/dev/null || true
  wait "$WPID" 2>/dev/null || true
  WPID=''
fi
T2=$EPOCHREALTIME
usec() { local t=${1//[.,]/}; echo $((10#$t)); }
if [ "$VERBOSE" = 1 ]; then
  echo "vmrun: kernel $KVER, artifacts $(( ($(usec "$T1") - $(usec "$T0")) / 1000 )) ms," \
       "guest (boot+command+power-off) $(( ($(usec "$T2") - $(usec "$T1")) / 1000 )) ms" >&2
fi
[ -z "$LOG" ] || cp "$CTL/console.log" "$LOG" 2>/dev/null || true

if [ "$TIMED_OUT" = 0 ] && [ -f "$CTL/exitcode" ]; then
  rc=$(cat "$CTL/exitcode")
  [[ $rc =~ ^[0-9]+$ ]] || die "guest reported a bad exit status: $rc"
  exit "$rc"
fi
if [ "$TIMED_OUT" = 1 ]; then
  echo "vmrun: hard timeout of $TIMEOUT s reached; guest killed. Guest console log:" >&2
  rc=124
else
  echo "vmrun: the guest ended without reporting an exit status (qemu exit status $st). Guest console log:" >&2
  rc=125
fi
sed 's/^/  | /' "$CTL/console.log" >&2 2>/dev/null || true
exit "$rc"
