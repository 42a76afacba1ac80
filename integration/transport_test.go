package integration

import (
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/testutil"
)

// kernelHasFUSEURing reports whether this kernel can serve FUSE over
// io_uring (the switch exists; volfs turns it on).
func kernelHasFUSEURing() bool {
	_, err := os.Stat("/sys/module/fuse/parameters/enable_uring")
	return err == nil
}

// TestTransports runs the same workload through both ways the kernel can
// hand volfs its requests, and checks from the server's own account which
// one served them: FUSE over io_uring by default (with aligned reads and
// writes done as device I/O on the ring), /dev/fuse with --io-uring=false.
// The rest of the suite runs on the default.
func TestTransports(t *testing.T) {
	testutil.Need(t, "fio")
	for _, c := range []struct {
		name  string
		flags []string
		ring  bool
	}{
		{"io_uring", nil, true},
		{"dev-fuse", []string{"--io-uring=false"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.ring && !kernelHasFUSEURing() {
				t.Skip("this kernel has no FUSE over io_uring (/sys/module/fuse/parameters/enable_uring)")
			}
			m, dev := setup(t, 64<<20, c.flags...)
			f := m.path(dev)
			// Concurrent aligned I/O at depth with an fdatasync every 16
			// writes (the ring's device path), verified; then unaligned
			// buffered I/O (go-fuse's path).
			sh(t, "fio", "--name=ring", "--filename="+f, "--rw=randrw", "--bsrange=4k-1M", "--size=48M",
				"--ioengine=libaio", "--iodepth=32", "--numjobs=1", "--direct=1", "--fdatasync=16", "--verify=crc32c",
				"--verify_fatal=1", "--verify_state_save=0", "--do_verify=1", "--randrepeat=0", "--output-format=terse")
			sh(t, "fio", "--name=odd", "--filename="+f, "--rw=randrw", "--bsrange=1k-33k", "--size=8M",
				"--offset=48M", "--ioengine=psync", "--verify=crc32c", "--verify_fatal=1",
				"--verify_state_save=0", "--output-format=terse")
			// Metadata requests take the ring too: listing, attributes, xattrs.
			sh(t, "ls", "-l", m.dir)
			sh(t, "setfattr", "-n", "user.transport", "-v", c.name, f)
			if got := sh(t, "getfattr", "--absolute-names", "--only-values", "-n", "user.transport", f); got != c.name {
				t.Fatalf("xattr read back %q, want %q", got, c.name)
			}
			// What the mount wrote reached the device, byte for byte.
			if !bytes.Equal(fileBytes(t, f, 0, 56<<20), fileBytes(t, dev, 0, 56<<20)) {
				t.Fatal("file and device differ")
			}
			m.umount()

			log, err := os.ReadFile(m.log)
			if err != nil {
				t.Fatal(err)
			}
			if !c.ring {
				if bytes.Contains(log, []byte("io_uring")) {
					t.Fatalf("--io-uring=false mount used io_uring:\n%s", log)
				}
				return
			}
			if !bytes.Contains(log, []byte("serving FUSE requests through io_uring")) {
				t.Fatalf("the mount did not serve through io_uring:\n%s", log)
			}
			ended := regexp.MustCompile(`io_uring queues ended.*requests=(\d+) direct_io=(\d+)`).FindSubmatch(log)
			if ended == nil {
				t.Fatalf("no account of the io_uring queues at unmount:\n%s", log)
			}
			requests, _ := strconv.Atoi(string(ended[1]))
			direct, _ := strconv.Atoi(string(ended[2]))
			// fio moved 48 MiB at least twice in requests of at most 1 MiB.
			if direct < 96 || requests <= direct {
				t.Fatalf("io_uring served %d requests, %d of them as device I/O: want device I/O for the "+
					"aligned data and go-fuse for the rest:\n%s", requests, direct, log)
			}
			if strings.Contains(string(log), "level=ERROR") {
				t.Fatalf("errors in the server log:\n%s", log)
			}
		})
	}
}

// TestTransportFallback: once INIT has agreed on io_uring the kernel holds
// every request until all queues are registered. If one cannot start, the
// mount must not hang: volfs makes the kernel fall back to /dev/fuse.
func TestTransportFallback(t *testing.T) {
	if !kernelHasFUSEURing() {
		t.Skip("this kernel has no FUSE over io_uring (/sys/module/fuse/parameters/enable_uring)")
	}
	testutil.Need(t, "fio")
	t.Setenv("VOLFS_TEST_FAIL_QUEUE", "1")
	m, dev := setup(t, 16<<20)
	sh(t, "fio", "--name=fallback", "--filename="+m.path(dev), "--rw=randrw", "--bsrange=512-256k",
		"--size=12M", "--ioengine=libaio", "--iodepth=8", "--direct=1", "--verify=crc32c",
		"--verify_fatal=1", "--verify_state_save=0", "--do_verify=1", "--output-format=terse")
	sh(t, "ls", "-l", m.dir)
	m.umount()
	log, err := os.ReadFile(m.log)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(log, []byte("did not start; serving through /dev/fuse")) ||
		bytes.Contains(log, []byte("serving FUSE requests through io_uring")) ||
		bytes.Contains(log, []byte("cannot make the kernel fall back")) {
		t.Fatalf("want a fall back to /dev/fuse after a queue failed:\n%s", log)
	}
}
