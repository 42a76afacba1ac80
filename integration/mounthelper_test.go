package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
)

// mount(8) runs /sbin/mount.fuse.volfs for type fuse.volfs and looks for
// helpers nowhere else. The test must not install into /sbin, so it runs
// mount(8) in a private mount namespace in which /usr/sbin is an overlay
// with the helper on top; everything that sees the mount (findmnt, I/O,
// umount) runs in that namespace, in one script.
const helperScript = `
set -eu
mount -t overlay volfs-test-sbin -o "lowerdir=$HELPERDIR:/usr/sbin" /usr/sbin || { echo "SKIP: no overlay mount"; exit 0; }
# 1: the fstab line, by its mount point, then umount(8) as systemd runs it
# (-c: libmount looks the mount up and runs umount.fuse.volfs, which
# returns once the server has exited and removed its pid file).
mount -T "$FSTAB" "$MNT"
echo "FSTAB $(findmnt -n -o SOURCE,FSTYPE "$MNT")"
# mount -a knows the line is mounted (findmnt shows its source).
mount -a -T "$FSTAB"
echo "MOUNTS $(findmnt -n -o TARGET "$MNT" | wc -l)"
dd if="$BASE/pattern" of="$MNT/$DEVNAME" bs=64k conv=notrunc,fsync status=none
cmp -n 65536 "$BASE/pattern" "$MNT/$DEVNAME"
umount -c "$MNT"
if [ -e "$PIDFILE" ]; then echo "SERVER RUNNING AFTER UMOUNT"; fi
# 2: the command line, the device as the source, read-only; volfs umount.
mount -t fuse.volfs "$DEV" "$MNT" -o "ro,state-dir=$BASE/state,log-file=$BASE/volfs.log"
echo "CMDLINE $(findmnt -n -o SOURCE,FSTYPE,OPTIONS "$MNT")"
if echo x | dd of="$MNT/$DEVNAME" conv=notrunc status=none 2>/dev/null; then echo "WROTE READ-ONLY"; fi
sleep 60 < "$MNT/$DEVNAME" &
holder=$!
# Wait until sleep has the file open (not bash on its way to exec it).
for _ in $(seq 500); do [ "$(readlink /proc/$holder/fd/0)" = "$MNT/$DEVNAME" ] && break; sleep 0.01; done
set +e
# (volfs names the holders by scanning /proc, which blocks while any
# process on the machine is stuck in a FUSE request: a deadline.)
timeout -s KILL 30 umount -c "$MNT" 2>"$BASE/err"; rc=$?
[ $rc = 137 ] && echo "BUSY UMOUNT HUNG"
echo "BUSY $rc $(cat "$BASE/err")"
set -e
kill $holder; wait $holder || true
"$VOLFS" umount "$MNT"
# A label as the source; a plain umount from a shell may skip the helper
# (libmount then knows the type only as "fuse", from statfs): the server
# exits on its own.
mount -t fuse.volfs volfs "$MNT" -o "device=$DEV,state-dir=$BASE/state,log-file=$BASE/volfs.log"
echo "LABEL $(findmnt -n -o SOURCE "$MNT")"
umount "$MNT"
for _ in $(seq 200); do [ -e "$PIDFILE" ] || break; sleep 0.05; done
if [ -e "$PIDFILE" ]; then echo "SERVER RUNNING AFTER UMOUNT"; fi
# 3: mistakes: mount(8)'s exit codes, nothing mounted.
set +e
mount -t fuse.volfs volfs "$MNT" -o "device=$DEV,bogus" 2>"$BASE/err"; echo "BOGUS $? $(cat "$BASE/err")"
mount -t fuse.volfs vg0 "$BASE/missing" 2>"$BASE/err"; echo "MISSING $? $(cat "$BASE/err")"
findmnt "$MNT" >/dev/null && echo "LEFT MOUNTED"
echo DONE
`

func TestMountHelper(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.Need(t, "mount", "umount", "findmnt", "unshare", "cmp", "timeout")
	dev := testutil.NewLoop(t, 8<<20)
	base, err := os.MkdirTemp(tmpRoot, "helper-")
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(base, "mnt")
	helperDir := filepath.Join(base, "sbin")
	for _, d := range []string{mnt, helperDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range []string{"mount.fuse.volfs", "umount.fuse.volfs"} {
		if err := os.Symlink(volfsBin, filepath.Join(helperDir, h)); err != nil {
			t.Fatal(err)
		}
	}
	pattern := bytes.Repeat([]byte("volfs-mount-helper\n"), 65536/19+1)[:65536]
	if err := os.WriteFile(filepath.Join(base, "pattern"), pattern, 0o644); err != nil {
		t.Fatal(err)
	}
	fstab := filepath.Join(base, "fstab")
	line := dev + " " + mnt + " fuse.volfs _netdev,nofail,x-systemd.before=libvirtd.service,defaults" +
		",state-dir=" + base + "/state,log-file=" + base + "/volfs.log,allow_other,log-level=warn 0 0\n"
	if err := os.WriteFile(fstab, []byte("# test fstab\n"+line), 0o644); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join("/run/volfs", pidFileName(mnt))
	t.Cleanup(func() { killServer(pidFile) })
	// A deadline: the script must not hang the run (a busy umount scans
	// /proc, which blocks while some process on the machine is stuck in
	// another FUSE mount).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "bash", "-c", helperScript)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), "HELPERDIR="+helperDir, "FSTAB="+fstab, "MNT="+mnt, "BASE="+base,
		"DEV="+dev, "DEVNAME="+filepath.Base(dev), "VOLFS="+volfsBin, "PIDFILE="+pidFile)
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "SKIP: ") {
		t.Skip(strings.TrimSpace(string(out)))
	}
	if err != nil || !strings.Contains(string(out), "DONE") {
		log, _ := os.ReadFile(filepath.Join(base, "volfs.log"))
		t.Fatalf("script: %v\n%s\nserver log:\n%s", err, out, log)
	}
	want := []string{
		"FSTAB " + dev + " fuse.volfs",
		"MOUNTS 1\n",
		"LABEL " + dev + "\n",
		"CMDLINE " + dev + " fuse.volfs ro,",
		"BUSY 32 umount.fuse.volfs: " + mnt + " is busy, in use by sleep (pid",
		"BOGUS 1 mount.fuse.volfs: unknown mount option \"bogus\"",
		"MISSING 32 mount.fuse.volfs: mountpoint " + base + "/missing does not exist",
	}
	for _, w := range want {
		if !strings.Contains(string(out), w) {
			t.Errorf("want %q in:\n%s", w, out)
		}
	}
	for _, bad := range []string{"WROTE READ-ONLY", "LEFT MOUNTED", "SERVER RUNNING AFTER UMOUNT", "BUSY UMOUNT HUNG"} {
		if strings.Contains(string(out), bad) {
			t.Errorf("%s:\n%s", bad, out)
		}
	}
	// The bytes written through the fstab mount are on the device.
	if got := sha(t, dev, int64(len(pattern))); got != sha(t, filepath.Join(base, "pattern"), int64(len(pattern))) {
		t.Error("the device does not hold what was written through the mount")
	}
	log, _ := os.ReadFile(filepath.Join(base, "volfs.log"))
	// log-level=warn from fstab: of the three mounts, only those from the
	// command line say that they serve.
	if n := strings.Count(string(log), "msg=serving mount="); n != 2 {
		t.Errorf("log-level=warn from fstab did not reach the server:\n%s", log)
	}
}

// pidFileName is the name of the pid file of the server of mnt (see
// pidPath in cmd/volfs).
func pidFileName(mnt string) string {
	out, _ := exec.Command("sh", "-c", `printf %s "$1" | sha256sum | cut -c1-16`, "sh", mnt).Output()
	return strings.TrimSpace(string(out)) + ".pid"
}

// killServer kills a server left running by a failed test; its mount
// goes with its namespace.
func killServer(pidFile string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	f := strings.Fields(string(b)) // "PID START"
	if len(f) == 0 {
		return
	}
	_ = exec.Command("kill", "-9", f[0]).Run()
	_ = os.Remove(pidFile)
}
