package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/testutil"
)

// make install DESTDIR=... puts every file where a distribution expects
// it; the unit passes systemd-analyze verify where systemd is installed.
func TestMakeInstall(t *testing.T) {
	testutil.Need(t, "make")
	dest := t.TempDir()
	out, err := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest, "PREFIX=/usr").CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for path, want := range map[string]string{
		"usr/bin/volfs":                                  "",
		"usr/share/man/man1/volfs.1":                     ".TH \"VOLFS\" \"1\"",
		"usr/share/man/man1/volfs-mount.1":               "--log-level",
		"usr/share/man/man1/volfs-umount.1":              "volfs-umount",
		"usr/share/man/man8/mount.fuse.volfs.8":          "x-systemd",
		"usr/share/man/man8/umount.fuse.volfs.8":         "umount.fuse.volfs",
		"usr/share/bash-completion/completions/volfs":    "__start_volfs",
		"usr/share/zsh/site-functions/_volfs":            "#compdef volfs",
		"usr/share/fish/vendor_completions.d/volfs.fish": "complete -c volfs",
		"usr/lib/systemd/system/volfs@.service":          "ExecStart=/usr/bin/volfs mount --foreground $VOLFS_ARGS %f",
		"etc/logrotate.d/volfs":                          "kill -HUP",
	} {
		b, err := os.ReadFile(filepath.Join(dest, path))
		if err != nil {
			t.Errorf("not installed: %v", err)
			continue
		}
		if !strings.Contains(string(b), want) {
			t.Errorf("%s does not contain %q", path, want)
		}
	}
	for _, h := range []string{"mount.fuse.volfs", "umount.fuse.volfs"} {
		if l, err := os.Readlink(filepath.Join(dest, "sbin", h)); err != nil || l != "/usr/bin/volfs" {
			t.Errorf("sbin/%s: %q %v, want a symlink to /usr/bin/volfs", h, l, err)
		}
	}
	if st, err := os.Stat(filepath.Join(dest, "usr/bin/volfs")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("usr/bin/volfs: %v %v", st, err)
	}
	out, err = exec.Command(filepath.Join(dest, "usr/bin/volfs"), "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "volfs ") {
		t.Errorf("installed volfs --version: %v %q", err, out)
	}
	out, err = exec.Command("make", "-C", "..", "uninstall", "DESTDIR="+dest, "PREFIX=/usr").CombinedOutput()
	if err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	var left []string
	_ = filepath.Walk(dest, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("make uninstall left %s", strings.Join(left, " "))
	}
}

// The unit file passes systemd-analyze verify. It checks that ExecStart's
// binary exists, so this installs under a PREFIX in a temporary directory
// (no DESTDIR) and verifies the unit there.
func TestSystemdUnitVerifies(t *testing.T) {
	testutil.Need(t, "make", "systemd-analyze")
	p := t.TempDir()
	out, err := exec.Command("make", "-C", "..", "install", "PREFIX="+p, "SBINDIR="+p+"/sbin", "SYSCONFDIR="+p+"/etc").CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	unit := filepath.Join(p, "lib/systemd/system/volfs@var-lib-images.service")
	out, err = exec.Command("systemd-analyze", "verify", "--man=no", unit).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// Completion offers volfs mount points to umount, and asking lvm for VG
// names fails quietly where there is no lvm.
func TestCompletion(t *testing.T) {
	m, _ := setup(t, 8<<20)
	out, code := volfsRun(t, "__complete", "umount", "")
	if code != 0 || !strings.Contains(out, m.dir+"\n") || !strings.Contains(out, ":4\n") {
		t.Errorf("volfs __complete umount: exit %d\n%s", code, out)
	}
	out, code = volfsRun(t, "__complete", "mount", "--vg", "")
	if code != 0 || !strings.Contains(out, ":4\n") {
		t.Errorf("volfs __complete mount --vg: exit %d\n%s", code, out)
	}
	out, code = volfsRun(t, "__complete", "mount", "--log-level", "")
	if code != 0 || !strings.Contains(out, "warn\n") {
		t.Errorf("volfs __complete mount --log-level: exit %d\n%s", code, out)
	}
}
