package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/testutil"
)

func TestQemuImg(t *testing.T) {
	testutil.Need(t, "qemu-img", "qemu-io")
	m, dev := setup(t, 64<<20)
	img := m.path(dev)
	// A qcow2 image outside, converted into the device file and back out.
	src := filepath.Join(t.TempDir(), "src.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "32M")
	sh(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 3M", "-c", "write -P 0xcd 20M 64k", src)
	sh(t, "qemu-img", "convert", "-n", "-O", "raw", "-t", "none", src, img)
	if out := sh(t, "qemu-img", "info", "-f", "raw", img); !strings.Contains(out, "file format: raw") ||
		!strings.Contains(out, "64 MiB") {
		t.Fatalf("qemu-img info:\n%s", out)
	}
	sh(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, img) // errors if the first 32M differ
	out := filepath.Join(t.TempDir(), "out.qcow2")
	sh(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-T", "none", img, out)
	sh(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", img, out)
	// qemu's own I/O paths: O_DIRECT with Linux AIO and with io_uring.
	for _, aio := range []string{"native", "io_uring"} {
		sh(t, "qemu-io", "-f", "raw", "-t", "none", "-i", aio,
			"-c", "write -P 0x5a 40M 1M", "-c", "read -P 0x5a 40M 1M",
			"-c", "write -P 0x11 41M 4k", "-c", "read -P 0x11 41M 4k", "-c", "flush", img)
	}
	if b := fileBytes(t, dev, 40<<20, 1); b[0] != 0x5a {
		t.Fatalf("device at 40M = %#x, want 0x5a", b[0])
	}
}

func TestFilesystemOnImage(t *testing.T) {
	testutil.Need(t, "mkfs.ext4", "fsck.ext4", "mount", "umount")
	m, dev := setup(t, 128<<20)
	sh(t, "mkfs.ext4", "-q", "-F", m.path(dev))
	out := sh(t, "losetup", "--find", "--show", "--direct-io=on", m.path(dev))
	loop := strings.TrimSpace(out)
	t.Cleanup(func() { _ = runQuiet("losetup", "-d", loop) })
	dir := t.TempDir()
	sh(t, "mount", loop, dir)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			_ = runQuiet("umount", dir)
		}
	})
	src := randomFile(t, 5_000_003)
	sh(t, "cp", src, filepath.Join(dir, "data"))
	if err := os.MkdirAll(filepath.Join(dir, "d/e/f"), 0o755); err != nil {
		t.Fatal(err)
	}
	sh(t, "sync")
	sh(t, "umount", dir)
	mounted = false
	sh(t, "fsck.ext4", "-fn", loop)
	sh(t, "losetup", "-d", loop)
	// The file system is on the device itself: check it there too.
	sh(t, "fsck.ext4", "-fn", dev)
	sh(t, "mount", "-o", "ro", dev, dir)
	mounted = true
	if sha(t, filepath.Join(dir, "data"), 1<<40) != sha(t, src, 1<<40) {
		t.Fatal("file read back from the device's file system differs")
	}
}

func runQuiet(name string, args ...string) error {
	return exec.Command(name, args...).Run()
}
