package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/testutil"
)

// TestFlushReachesDevice: every fdatasync of an image must make the device
// flush its write cache, as the same fdatasync of the raw device does,
// whichever way the io_uring queue issues it (on its own thread for a fast
// device, else through io-wq). The block layer's own trace of the loop
// device counts the flush requests its driver received: through volfs at
// least as many as for the raw device, in both of the device's cache
// modes. "write through" (no volatile cache) shows the kernel's side of
// the bargain volfs relies on: the raw device's fdatasync then sends the
// driver no flush at all, the block layer completes it at once.
func TestFlushReachesDevice(t *testing.T) {
	testutil.RequireRoot(t)
	tr := newBlockTrace(t)
	dev := testutil.NewLoop(t, 16<<20)
	m := newMount(t, []string{dev})
	name := filepath.Base(dev)
	const syncs = 40
	for _, cache := range []string{"write back", "write through"} {
		if err := os.WriteFile("/sys/block/"+name+"/queue/write_cache", []byte(cache), 0); err != nil {
			t.Fatal(err)
		}
		raw := tr.flushes(t, dev, func() { writeSync(t, dev, syncs) })
		viaVolfs := tr.flushes(t, dev, func() { writeSync(t, m.path(dev), syncs) })
		t.Logf("%s: %d write+fdatasync: %d flushes reached the raw device's driver, %d through volfs", cache, syncs, raw, viaVolfs)
		if viaVolfs < raw {
			t.Errorf("%s: %d fdatasyncs of the image sent the device %d flushes, the raw device's got %d", cache, syncs, viaVolfs, raw)
		}
		if cache == "write back" && raw < syncs {
			t.Errorf("write back: %d fdatasyncs of the raw device sent %d flushes: the trace misses some", syncs, raw)
		}
	}
	m.umount()
	log, err := os.ReadFile(m.log)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(log), "level=ERROR") {
		t.Fatalf("errors in the server log:\n%s", log)
	}
	if m := regexp.MustCompile(`io_uring queues ended.*`).Find(log); m != nil {
		t.Logf("the queues' account: %s", m) // flushed_inline: the flushes made on a queue's thread
	}
}

// writeSync writes 4 KiB at a time with O_DIRECT, fdatasync after each.
func writeSync(t *testing.T, path string, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	for i := range n {
		buf[0] = byte(i)
		if _, err := f.WriteAt(buf, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			t.Fatal(err)
		}
	}
}

// blockTrace is a private tracefs instance recording the block layer's
// requests as they are issued to drivers.
type blockTrace struct{ dir string }

func newBlockTrace(t *testing.T) *blockTrace {
	t.Helper()
	root := "/sys/kernel/tracing"
	if _, err := os.Stat(root + "/instances"); err != nil {
		if err := unix.Mount("nodev", root, "tracefs", 0, ""); err != nil {
			t.Skipf("no tracefs at %s (%v): the block layer's requests cannot be counted", root, err)
		}
		t.Cleanup(func() { _ = unix.Unmount(root, 0) })
	}
	dir := fmt.Sprintf("%s/instances/volfs-test-%d", root, os.Getpid())
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Skipf("cannot make a tracefs instance: %v", err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(dir+"/events/block/block_rq_issue/enable", []byte("0"), 0)
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing the tracefs instance %s: %v", dir, err)
		}
	})
	if _, err := os.Stat(dir + "/events/block/block_rq_issue"); err != nil {
		t.Skipf("no block_rq_issue trace event: %v", err)
	}
	return &blockTrace{dir: dir}
}

// flushes runs f and counts the flush requests issued to dev's driver
// meanwhile.
func (b *blockTrace) flushes(t *testing.T, dev string, f func()) int {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	// The kernel's dev_t: major << 20 | minor.
	filter := fmt.Sprintf("dev == %d", unix.Major(st.Rdev)<<20|unix.Minor(st.Rdev))
	ev := b.dir + "/events/block/block_rq_issue/"
	for _, w := range [][2]string{{ev + "filter", filter}, {b.dir + "/trace", ""}, {ev + "enable", "1"}} {
		if err := os.WriteFile(w[0], []byte(w[1]), 0); err != nil {
			t.Fatal(err)
		}
	}
	f()
	if err := os.WriteFile(ev+"enable", []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	out, err := os.ReadFile(b.dir + "/trace")
	if err != nil {
		t.Fatal(err)
	}
	// A line: "  task-1 [000] ..... 12.3: block_rq_issue: 7,0 FF 0 () 0 + 0 [task]";
	// the field after the device is RWBS, F for a flush.
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		_, rest, ok := strings.Cut(line, "block_rq_issue: ")
		if fs := strings.Fields(rest); ok && len(fs) > 1 && strings.Contains(fs[1], "F") {
			n++
		}
	}
	if strings.Contains(string(out), "LOST") {
		t.Fatal("the trace lost events")
	}
	return n
}
