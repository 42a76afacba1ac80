package blockdev

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/testutil"
	"github.com/volfs/volfs/volmap/volmaptest"
)

func TestConformance(t *testing.T) {
	testutil.RequireRoot(t)
	a, b := testutil.NewLoop(t, 64<<20), testutil.NewLoop(t, 32<<20)
	d, err := New(Config{Globs: []string{a, b}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	volmaptest.Run(t, d, volmaptest.Options{Existing: []string{filepath.Base(a), filepath.Base(b)}})
}

func TestNoMatchIsAnError(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(regular, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, globs := range [][]string{{filepath.Join(dir, "nothing*")}, {regular}} {
		_, err := New(Config{Globs: globs, StateDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "no block device matches") {
			t.Errorf("New(%v) = %v, want 'no block device matches'", globs, err)
		}
	}
	if _, err := New(Config{Globs: []string{"/dev/[loop"}, StateDir: t.TempDir()}); err == nil {
		t.Error("a malformed glob was accepted")
	}
}

func TestIdentity(t *testing.T) {
	testutil.RequireRoot(t) // mknod
	sys := t.TempDir()
	mk := func(p, content string) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(sys, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sys, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("sys/dev/block/7:7/loop/backing_file", "/srv/img/web.raw\n")
	mk("sys/dev/block/7:7/loop/offset", "0\n")
	if err := os.MkdirAll(filepath.Join(sys, "dev/disk/by-id"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(sys, "dev/sdb"), unix.S_IFBLK|0o600, int(unix.Mkdev(8, 16))); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../sdb", filepath.Join(sys, "dev/disk/by-id/wwn-0x5000")); err != nil {
		t.Fatal(err)
	}
	d := &Driver{cfg: Config{SysRoot: sys}}
	for rdev, want := range map[uint64]string{
		unix.Mkdev(7, 7):     "loop:/srv/img/web.raw@0",
		unix.Mkdev(8, 16):    "by-id:wwn-0x5000",
		unix.Mkdev(230, 123): "dev:230:123", // a zvol: never the path a user may re-point
	} {
		if got := d.identity(rdev); got != want {
			t.Errorf("identity(%s) = %q, want %q", devno(rdev), got, want)
		}
	}
}
