package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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

// ringAccount returns what the server's log says of its io_uring queues:
// how many it started and their depth, and at unmount how many entries
// they still had and how many they registered again after an error.
func ringAccount(t *testing.T, log []byte) (queues, depth, entries, rearmed int) {
	t.Helper()
	started := regexp.MustCompile(`serving FUSE requests through io_uring.* queues=(\d+) depth=(\d+)`).FindSubmatch(log)
	ended := regexp.MustCompile(`io_uring queues ended.* entries=(\d+) rearmed=(\d+)`).FindSubmatch(log)
	if started == nil || ended == nil {
		t.Fatalf("no account of the io_uring queues in the log:\n%s", log)
	}
	queues, _ = strconv.Atoi(string(started[1]))
	depth, _ = strconv.Atoi(string(started[2]))
	entries, _ = strconv.Atoi(string(ended[1]))
	rearmed, _ = strconv.Atoi(string(ended[2]))
	return queues, depth, entries, rearmed
}

// TestRingEntryErrors: a ring entry whose command the kernel ends with an
// error (a refused registration or commit) must be registered again, or
// the queue shrinks by one entry per error until it serves nothing. The
// fault injection VOLFS_TEST_FAIL_RING=entries starts every entry of every
// queue but the first with an error completion; the queues must still
// have all their entries at unmount, and serve a verified workload at
// depth meanwhile.
func TestRingEntryErrors(t *testing.T) {
	if !kernelHasFUSEURing() {
		t.Skip("this kernel has no FUSE over io_uring (/sys/module/fuse/parameters/enable_uring)")
	}
	testutil.Need(t, "fio")
	t.Setenv("VOLFS_TEST_FAIL_RING", "entries")
	m, dev := setup(t, 32<<20)
	sh(t, "fio", "--name=entries", "--filename="+m.path(dev), "--rw=randrw", "--bsrange=4k-256k", "--size=24M",
		"--ioengine=libaio", "--iodepth=32", "--direct=1", "--verify=crc32c", "--verify_fatal=1",
		"--verify_state_save=0", "--do_verify=1", "--output-format=terse")
	sh(t, "ls", "-l", m.dir)
	m.umount()
	log, err := os.ReadFile(m.log)
	if err != nil {
		t.Fatal(err)
	}
	queues, depth, entries, rearmed := ringAccount(t, log)
	if entries != queues*depth || rearmed < queues*(depth-1) {
		t.Fatalf("%d queues of %d ended with %d entries after %d registrations again; want %d entries after at least %d:\n%s",
			queues, depth, entries, rearmed, queues*depth, queues*(depth-1), log)
	}
	if strings.Contains(string(log), "level=ERROR") {
		t.Fatalf("errors in the server log:\n%s", log)
	}
	// volfs's main gives the rings their Ps (the fs package only warns).
	if strings.Contains(string(log), "GOMAXPROCS is lower") {
		t.Fatalf("the server ran with too few Ps for its io_uring queues:\n%s", log)
	}
	t.Logf("%d queues of %d: %d entries at unmount, %d registered again", queues, depth, entries, rearmed)
}

// TestRingFailure: a queue whose ring breaks while serving (here every
// io_uring_enter fails once the queues answered 200 requests, through
// VOLFS_TEST_FAIL_RING=submit) cannot hand its requests back to
// /dev/fuse: the kernel would keep routing requests to it and they would
// wait forever. The server must abort the connection instead: clients get
// errors promptly, the log says why, the mount point answers ENOTCONN
// until it is unmounted.
func TestRingFailure(t *testing.T) {
	if !kernelHasFUSEURing() {
		t.Skip("this kernel has no FUSE over io_uring (/sys/module/fuse/parameters/enable_uring)")
	}
	testutil.Need(t, "fio")
	t.Setenv("VOLFS_TEST_FAIL_RING", "submit")
	m, dev := setup(t, 32<<20)
	// The mount must not stay wedged whatever happens: a forced unmount
	// aborts it (before newMount's cleanup, which would wait on it).
	t.Cleanup(func() {
		if ok, _ := isMounted(m.dir); ok {
			_ = syscall.Unmount(m.dir, syscall.MNT_FORCE)
			_ = syscall.Unmount(m.dir, syscall.MNT_DETACH)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fio := exec.CommandContext(ctx, "fio", "--name=broken", "--filename="+m.path(dev), "--rw=randrw",
		"--bs=4k", "--size=24M", "--ioengine=libaio", "--iodepth=16", "--direct=1", "--loops=20",
		"--output-format=terse")
	// fio runs its job in a child process: on timeout, kill them all.
	fio.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fio.Cancel = func() error { return syscall.Kill(-fio.Process.Pid, syscall.SIGKILL) }
	fio.WaitDelay = 10 * time.Second
	out, err := fio.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("fio still waiting for the mount after the ring broke:\n%s", out)
	}
	if err == nil {
		t.Fatalf("fio succeeded on a mount whose ring broke:\n%s", out)
	}
	// The server exits once the connection is gone.
	deadline := time.Now().Add(30 * time.Second)
	var log []byte
	for {
		log, _ = os.ReadFile(m.log)
		if bytes.Contains(log, []byte("msg=unmounted")) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The mount point answers ENOTCONN until it is unmounted (unless the
	// server's forced unmount already took it away).
	if ok, _ := isMounted(m.dir); ok {
		var st syscall.Stat_t
		if err := syscall.Stat(m.path(dev), &st); err != syscall.ENOTCONN {
			t.Errorf("stat after the abort: %v, want ENOTCONN", err)
		}
		if err := syscall.Unmount(m.dir, 0); err != nil {
			t.Errorf("unmount after the abort: %v", err)
		}
	}
	if !bytes.Contains(log, []byte("io_uring queue failed; aborted the FUSE connection")) ||
		!bytes.Contains(log, []byte("VOLFS_TEST_FAIL_RING=submit")) {
		t.Fatalf("no account of the abort in the server log:\n%s", log)
	}
	if !bytes.Contains(log, []byte("msg=unmounted")) {
		t.Fatalf("the server did not end after the abort:\n%s", log)
	}
	t.Logf("fio: %v", err)
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, "aborted the FUSE connection") {
			t.Log(l)
		}
	}
}

// TestRingIdle: a server with nothing to do uses no CPU. The io_uring
// queues poll for a moment after each request and wait in the kernel
// holding their Go P; once idle they must sleep for good (before: the Go
// runtime's preemption signal woke each queue every 10 ms, about 800
// wake-ups and 2.7% of a CPU a second). Counted from the kernel's account
// of the server's threads, a second after a burst of I/O.
func TestRingIdle(t *testing.T) {
	if !kernelHasFUSEURing() {
		t.Skip("this kernel has no FUSE over io_uring (/sys/module/fuse/parameters/enable_uring)")
	}
	testutil.Need(t, "fio")
	m, dev := setup(t, 16<<20)
	sh(t, "fio", "--name=burst", "--filename="+m.path(dev), "--rw=randrw", "--bs=4k", "--size=12M",
		"--ioengine=libaio", "--iodepth=1", "--direct=1", "--time_based", "--runtime=1", "--output-format=terse")
	pid := serverPid(t, m)
	time.Sleep(time.Second)
	sw0, cpu0 := threadAccount(t, pid)
	const idle = 2 * time.Second
	time.Sleep(idle)
	sw1, cpu1 := threadAccount(t, pid)
	t.Logf("idle server over %v: %d context switches, %d clock ticks of CPU", idle, sw1-sw0, cpu1-cpu0)
	// The bug woke the queues about 1,600 times in 2 s; the Go runtime's
	// own timers (sysmon, GC, the race detector's under make racetest)
	// wake the threads some dozens of times (6-48 seen under -race).
	if sw1-sw0 > 200 || cpu1-cpu0 > 2 {
		t.Errorf("the idle server's threads switched %d times and used %d clock ticks of CPU in %v: "+
			"something polls or wakes periodically", sw1-sw0, cpu1-cpu0, idle)
	}
}

// threadAccount sums the context switches (voluntary and not) and the CPU
// time (utime+stime, clock ticks) of all threads of process pid.
func threadAccount(t *testing.T, pid int) (switches, ticks int) {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		status, err1 := os.ReadFile(dir + "/" + task.Name() + "/status")
		stat, err2 := os.ReadFile(dir + "/" + task.Name() + "/stat")
		if err1 != nil || err2 != nil {
			continue // the thread ended meanwhile
		}
		for _, line := range strings.Split(string(status), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				switches += n
			}
		}
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		u, _ := strconv.Atoi(f[11])
		k, _ := strconv.Atoi(f[12])
		ticks += u + k
	}
	return switches, ticks
}
