package lvm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mount(8) with the VG/POOL as the source, from an fstab line: findmnt
// shows VG/POOL, a new file is a thin LV of the pool carrying the tag, and
// umount as systemd runs it waits for the server. As on the host
// (integration/mounthelper_test.go), the helper reaches mount(8) through an
// overlay on /usr/sbin in a private mount namespace.
func TestMountHelperVG(t *testing.T) {
	e := newVG(t)
	e.thinPool("pool", "256m")
	for _, tool := range []string{"unshare", "findmnt", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	mnt := filepath.Join(e.base, "mnt")
	helperDir := filepath.Join(e.base, "sbin")
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
	log := filepath.Join(e.base, "volfs.log")
	fstab := filepath.Join(e.base, "fstab")
	line := e.vg + "/pool " + mnt + " fuse.volfs nofail,_netdev,x-systemd.before=libvirtd.service,tag=vms,log-file=" + log + " 0 0\n"
	if err := os.WriteFile(fstab, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `
set -eu
mount -t overlay volfs-test-sbin -o "lowerdir=$HELPERDIR:/usr/sbin" /usr/sbin || { echo "SKIP: no overlay mount"; exit 0; }
mount -T "$FSTAB" "$MNT"
echo "SOURCE $(findmnt -n -o SOURCE,FSTYPE "$MNT")"
dd if=/dev/zero of="$MNT/web" bs=1M count=4 conv=fsync status=none
sleep 60 < "$MNT/web" &
holder=$!
# Wait until sleep has the file open (not bash on its way to exec it).
for _ in $(seq 500); do [ "$(readlink /proc/$holder/fd/0)" = "$MNT/web" ] && break; sleep 0.01; done
set +e
umount -c "$MNT" 2>"$MNT.err"; echo "BUSY $? $(cat "$MNT.err")"
set -e
kill $holder; wait $holder || true
pidfile=/run/volfs/$(printf %s "$MNT" | sha256sum | cut -c1-16).pid
[ -e "$pidfile" ] || echo "NO PID FILE"
umount -c "$MNT" # runs umount.fuse.volfs, which waits for the server to exit
findmnt "$MNT" >/dev/null && echo "LEFT MOUNTED"
[ -e "$pidfile" ] && echo "SERVER RUNNING AFTER UMOUNT"
echo DONE
`
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "bash", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), "HELPERDIR="+helperDir, "FSTAB="+fstab, "MNT="+mnt)
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "SKIP: ") {
		t.Skip(strings.TrimSpace(string(out)))
	}
	if err != nil || !strings.Contains(string(out), "DONE") || strings.Contains(string(out), "LEFT MOUNTED") ||
		strings.Contains(string(out), "SERVER RUNNING") || strings.Contains(string(out), "NO PID FILE") {
		b, _ := os.ReadFile(log)
		t.Fatalf("script: %v\n%s\nserver log:\n%s", err, out, b)
	}
	for _, want := range []string{
		"SOURCE " + e.vg + "/pool fuse.volfs",
		"BUSY 32 umount.fuse.volfs: " + mnt + " is busy, in use by sleep (pid",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("want %q in:\n%s", want, out)
		}
	}
	l := e.lv("web")
	if l.Pool != "pool" || !l.hasTag("vms") {
		t.Errorf("LV web: pool %q, tags %v; want a thin LV of pool tagged vms", l.Pool, l.Tags)
	}
}
