#!/bin/bash
# mkinitramfs.sh - build (or find up to date in the cache) the boot artifacts of
# the volfs test guest:
#   - a tiny initramfs: busybox-static + the modules needed to reach the host
#     root over virtio-9p (virtio_pci, virtio_blk, virtio_console, virtio-rng,
#     9pnet_virtio, 9p, overlay and their dependencies), and an /init that
#     mounts the HOST root read-only (9p tag "hostroot") under a tmpfs
#     overlay, chroots into it, runs <ctl>/cmd.sh, stores its exit status in
#     <ctl>/exitcode and powers off;
#   - the uncompressed vmlinux extracted from /boot/vmlinuz-KVER, which QEMU
#     boots through the PVH entry point (skips ~6 s of in-guest xz
#     decompression under TCG). If the extraction fails the bzImage is used.
#
# Artifacts live in ${VOLFS_VM_CACHE:-/var/tmp/volfs-vm}/KVER/, outside the
# git tree. Their names carry a hash of this script, the kernel image, the
# modules and busybox, so any change of those (a new kernel version or a
# rebuilt package of the same version) makes a rebuild; kernels no longer
# installed are pruned. Concurrent callers are serialised with flock.
#
# Usage: mkinitramfs.sh [-f] [-k KVER]
#   -f       rebuild even if the cache is up to date
#   -k KVER  kernel version (default: $VOLFS_VM_KVER, else the newest version
#            that has both /boot/vmlinuz-KVER and /lib/modules/KVER/modules.dep)
# Prints KVER=..., INITRD=..., KERNEL=... on stdout (build messages on stderr).
#
# Kernel command line understood by /init:
#   volfs.ctl=DIR        host control dir (9p tag "volfsctl"), mounted at DIR
#   volfs.rw=TAG=DIR,... extra read-write 9p shares, mounted at DIR
#   volfs.dump=SECS      print the process list and blocked tasks to the
#                        console if the command still runs after SECS
# The command's stdout+stderr go to the virtio-serial port named "volfs.out"
# (raw bytes, no tty layer); /init's own messages go to the kernel console.
set -euo pipefail

die() { echo "mkinitramfs: $*" >&2; exit 1; }

CACHE=${VOLFS_VM_CACHE:-/var/tmp/volfs-vm}
KVER=${VOLFS_VM_KVER:-}
FORCE=0
while getopts "fk:" o; do
  case $o in
    f) FORCE=1;;
    k) KVER=$OPTARG;;
    *) echo "usage: $0 [-f] [-k KVER]" >&2; exit 2;;
  esac
done
shift $((OPTIND-1))

# Newest kernel that can really be booted: /lib/modules may hold entries of
# the host's own kernel (without a /boot image), so both are required.
pick_kver() {
  local d v best=
  for d in /lib/modules/*/; do
    v=$(basename "$d")
    if [ ! -r "/boot/vmlinuz-$v" ] || [ ! -r "/lib/modules/$v/modules.dep" ]; then continue; fi
    best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -1)
  done
  printf '%s' "$best"
}
[ -n "$KVER" ] || KVER=$(pick_kver)
[ -n "$KVER" ] || die "no bootable kernel (need /boot/vmlinuz-KVER and /lib/modules/KVER); run integration/vm/install-deps.sh"
BZ=/boot/vmlinuz-$KVER
[ -r "$BZ" ] || die "$BZ not readable"
[ -r "/lib/modules/$KVER/modules.dep" ] || die "/lib/modules/$KVER/modules.dep missing"

BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (install busybox-static)"
if readelf -l "$BUSYBOX" 2>/dev/null | grep -q INTERP; then
  die "$BUSYBOX is dynamically linked; install busybox-static"
fi

SELF=$(readlink -f "$0")
stat_of() { stat -L -c '%n %s %Y' "$@"; }
KEY=$( { sha256sum < "$SELF"; echo "$KVER"; stat_of "$BZ" "/lib/modules/$KVER/modules.dep" "$BUSYBOX"; } \
       | sha256sum | cut -c1-16)
KKEY=$(stat_of "$BZ" | sha256sum | cut -c1-16)
DIR=$CACHE/$KVER
INITRD=$DIR/initramfs-$KEY.cpio.gz
VMLINUX=$DIR/vmlinux-$KKEY
NOVMLINUX=$DIR/novmlinux-$KEY   # remembers a failed extraction (retried when anything changes)

report() {
  local kernel=$BZ
  [ -s "$VMLINUX" ] && kernel=$VMLINUX
  printf 'KVER=%s\nINITRD=%s\nKERNEL=%s\n' "$KVER" "$INITRD" "$kernel"
}

up_to_date() {
  [ "$FORCE" = 0 ] && [ -s "$INITRD" ] && { [ -s "$VMLINUX" ] || [ -e "$NOVMLINUX" ]; }
}
if up_to_date; then report; exit 0; fi

mkdir -p "$DIR"
exec {LOCK}>"$CACHE/.lock"
flock "$LOCK"
if up_to_date; then report; exit 0; fi   # another caller built it meanwhile

W=$(mktemp -d "$DIR/build.XXXXXX")
trap 'rm -rf "$W"' EXIT

build_initramfs() {
  local root=$W/root a m ko
  mkdir -p "$root"/{bin,dev,proc,sys,mods,lower,rw,newroot}
  cp "$BUSYBOX" "$root/bin/busybox"
  for a in sh mount umount mkdir insmod chroot poweroff sleep cat echo sync ip sed mv; do
    ln -s busybox "$root/bin/$a"
  done
  # Modules needed before the host root (and its /lib/modules) is reachable,
  # in dependency order. Everything else (dm-*, fuse, loop) is modprobe'd in
  # the chroot by the guest setup of vmrun.sh.
  for m in virtio_pci virtio_blk virtio_console virtio-rng 9pnet_virtio 9p overlay; do
    modprobe -S "$KVER" --show-depends "$m" || die "modprobe --show-depends $m failed"
  done | awk '$1=="insmod"{print $2}' | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$root/mods/"
    basename "$ko" >> "$root/mods/order"
  done
  [ -s "$root/mods/order" ] || touch "$root/mods/order"   # all built in
  cat > "$root/init" <<'INIT'
#!/bin/sh
# volfs test guest /init (busybox). Messages go to the kernel console.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { echo "volfs-vm: $*"; }
# Without a control dir nobody can learn the exit status: vmrun.sh then
# prints this console log and fails.
fail() { log "FATAL: $*"; sync; poweroff -f; sleep 10; exit 1; }
while read -r m; do insmod "/mods/$m" || log "insmod $m failed"; done < /mods/order
CTL= RW= DUMP=
for w in $(cat /proc/cmdline); do
  case $w in
    volfs.ctl=*) CTL=${w#volfs.ctl=};;
    volfs.dump=*) DUMP=${w#volfs.dump=};;
    volfs.rw=*) RW=${w#volfs.rw=};;
  esac
done
[ -n "$CTL" ] || fail "no volfs.ctl= on the kernel command line"
O9P=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$O9P,ro,cache=loose" hostroot /lower || fail "mounting the host root failed"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
  || fail "overlay mount failed"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/lock
mkdir -p "/newroot$CTL"
mount -t 9p -o "$O9P" volfsctl "/newroot$CTL" || fail "mounting the control dir failed"
for e in $(echo "$RW" | sed 's/,/ /g'); do
  tag=${e%%=*} dir=${e#*=}
  mkdir -p "/newroot$dir"
  mount -t 9p -o "$O9P" "$tag" "/newroot$dir" || fail "mounting $tag at $dir failed"
done
ip link set lo up 2>/dev/null || log "could not bring up lo"
OUT=/dev/console
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = volfs.out ] && OUT=/dev/${p##*/}
done
read -r up _ < /proc/uptime
log "starting command at ${up}s (output to $OUT)"
if [ -n "$DUMP" ]; then
  # Watchdog: a command still running DUMP seconds from now is about to be
  # killed by vmrun.sh; leave in the console log what every process waits on.
  ( sleep "$DUMP"
    log "watchdog: the command still runs after ${DUMP}s; processes and blocked tasks follow"
    chroot /newroot ps -eo pid,ppid,stat,wchan:32,etimes,args >/dev/console 2>&1
    echo w > /proc/sysrq-trigger ) &
fi
chroot /newroot /bin/bash "$CTL/cmd.sh" </dev/null >"$OUT" 2>&1
rc=$?
read -r up _ < /proc/uptime
log "command exited with status $rc at ${up}s"
echo "$rc" > "/newroot$CTL/exitcode.new" && mv "/newroot$CTL/exitcode.new" "/newroot$CTL/exitcode"
sync
poweroff -f
sleep 10
INIT
  chmod +x "$root/init"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) > "$W/initramfs"
  mv -f "$W/initramfs" "$INITRD"
  echo "mkinitramfs: built $INITRD ($(du -k "$INITRD" | cut -f1) KiB)" >&2
}

# Uncompressed ELF vmlinux with a PVH (Xen ELF note) entry for QEMU's direct
# boot: find the xz stream inside the bzImage and decompress it.
extract_vmlinux() {
  local off
  rm -f "$NOVMLINUX"
  off=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$BZ" | head -1 | cut -d: -f1 || true)
  # (via a file: with pipefail, tail's SIGPIPE would fail a pipeline)
  if [ -n "$off" ] && tail -c +$((off+1)) "$BZ" > "$W/vmlinux.xz" \
     && xz -dc --single-stream "$W/vmlinux.xz" > "$W/vmlinux" 2>/dev/null \
     && readelf -n "$W/vmlinux" 2>/dev/null | grep -q Xen; then
    mv -f "$W/vmlinux" "$VMLINUX"
    echo "mkinitramfs: extracted $VMLINUX" >&2
  else
    touch "$NOVMLINUX"
    echo "mkinitramfs: note: could not extract a PVH vmlinux; booting the bzImage (slower)" >&2
  fi
}

{ [ "$FORCE" = 0 ] && [ -s "$INITRD" ]; } || build_initramfs
{ [ "$FORCE" = 0 ] && { [ -s "$VMLINUX" ] || [ -e "$NOVMLINUX" ]; }; } || extract_vmlinux

# Prune stale artifacts: all but the 3 newest builds of each kind for this
# kernel (other checkouts with another version of this script may share the
# cache), kernels gone from /boot.
touch "$INITRD"
for pat in 'initramfs-*.cpio.gz' 'vmlinux-*' 'novmlinux-*'; do
  find "$DIR" -maxdepth 1 -name "$pat" -printf '%T@ %p\n' | sort -rn | tail -n +4 | cut -d' ' -f2- |
    while read -r f; do rm -f "$f"; done
done
for d in "$CACHE"/*/; do
  [ -d "$d" ] || continue
  [ -e "/boot/vmlinuz-$(basename "$d")" ] || rm -rf "$d"
done
report
