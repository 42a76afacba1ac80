package lvm

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The load test of issue 11: several processes at once, for minutes,
// against one mount that serves linear and thin files: copies in and out
// verified by sha256, fio --verify at mixed block sizes and queue depths,
// and metadata operations on many files (ls -l, stat, user.* xattrs,
// chmod, mv, mv over a file, create, rm). No command may fail and no byte
// may differ; the server's RSS, open fds, threads and goroutines are
// sampled and must stay flat.

// soakDuration is how long TestSoak loads the mount, warm-up included:
// VOLFS_SOAK_DURATION (a Go duration; `make soak DURATION=10m`), 2m by
// default (CI).
func soakDuration(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv("VOLFS_SOAK_DURATION")
	if v == "" {
		return 2 * time.Minute
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Minute {
		t.Fatalf("VOLFS_SOAK_DURATION=%q: want a Go duration of 1m or more (e.g. 10m)", v)
	}
	return d
}

// usage is one sample of the server's resources.
type usage struct {
	at         time.Duration // since the main load began (warm-up and idle samples: 0)
	rssKiB     int
	fds        int
	threads    int
	goroutines int
	readers    int      // threads waiting in read(2) on /dev/fuse: go-fuse's idle readers
	heapMiB    float64  // go_memstats_heap_inuse_bytes
	handles    int      // volfs_open_handles
	requests   float64  // the sum of volfs_requests_total
	errors     float64  // the sum of volfs_errors_total
	errorsBy   []string // its nonzero series, "op=N"
}

func (u usage) String() string {
	return fmt.Sprintf("%7s  rss %4d MiB  heap %5.1f MiB  fds %3d  threads %3d  goroutines %4d (fuse readers %2d)  handles %2d  requests %8.0f",
		u.at.Round(time.Second), u.rssKiB/1024, u.heapMiB, u.fds, u.threads, u.goroutines, u.readers, u.handles, u.requests)
}

// others are the goroutines besides go-fuse's readers. go-fuse starts a
// reader whenever every reader is busy, up to GOMAXPROCS (16 in volfs) at
// once, and an idle reader waits in read(2) until the next request: after
// a burst of requests an idle server keeps up to 17, which is no leak.
func (u usage) others() int {
	return u.goroutines - u.readers
}

// soak is the load on one mount. The workers run in goroutines, each
// driving its own processes; the test's goroutine samples the server.
type soak struct {
	t       *testing.T
	e       *env
	m       *mount
	pid     int
	metrics string // the server's --metrics address

	stop     chan struct{} // closed when the phase ends or a worker fails
	stopOnce *sync.Once

	mu  sync.Mutex
	ops map[string]int // what the workers did, by kind
}

func (s *soak) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *soak) halt() { s.stopOnce.Do(func() { close(s.stop) }) }

// failf fails the test and stops every worker: the first failure is the
// one to read.
func (s *soak) failf(format string, args ...any) {
	s.t.Errorf(format, args...)
	s.halt()
}

func (s *soak) count(kind string) {
	s.mu.Lock()
	s.ops[kind]++
	s.mu.Unlock()
}

// run runs a command of a worker; a failure fails the test.
func (s *soak) run(name string, args ...string) (string, bool) {
	out, err := try(name, args...)
	if err != nil {
		s.failf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		return out, false
	}
	return out, true
}

// sum is sha256sum's digest of path, by another process.
func (s *soak) sum(path string) (string, bool) {
	out, ok := s.run("sha256sum", path)
	if !ok {
		return "", false
	}
	return strings.Fields(out)[0], true
}

// absent checks that path is gone from the mount.
func (s *soak) absent(path, after string) bool {
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		s.failf("%s after %s: lstat says %v, want ENOENT", path, after, err)
		return false
	}
	return true
}

// onlyVanished accepts the output of a command over many files (ls -l,
// stat) when every error it printed is a file renamed or removed between
// the listing and the stat.
func (s *soak) onlyVanished(cmd string, out string, err error) {
	if err == nil {
		return
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, cmd+": ") && !strings.HasSuffix(line, ": No such file or directory") {
			s.failf("%s of the mount: %v\n%s", cmd, err, out)
			return
		}
	}
}

// source is a data file outside the mount and its sha256.
type source struct {
	path, sum string
	size      int
}

func (s *soak) source(name string, size int, seed byte) source {
	p := s.e.file(name, size, seed)
	return source{path: p, sum: sha(s.t, p), size: size}
}

// copier copies sources into the mount and back out, checking both copies
// by sha256. The linear copier overwrites one linear file (cp truncates
// it: the LV shrinks and grows each time); the thin one makes a new thin
// file each time, renames every other one, and removes it.
func (s *soak) copier(thin bool, srcs []source) func() {
	out := filepath.Join(s.e.base, fmt.Sprintf("out-thin-%v", thin))
	i := 0
	return func() {
		for !s.stopped() {
			src := srcs[i%len(srcs)]
			i++
			dst := s.m.path("lin-copy")
			if thin {
				dst = s.m.path(fmt.Sprintf("copy-%d", i))
			}
			if _, ok := s.run("cp", src.path, dst); !ok {
				return
			}
			if sum, ok := s.sum(dst); !ok || sum != src.sum {
				s.failf("%s: sha256 %s after cp of %s (%d bytes), want %s", dst, sum, src.path, src.size, src.sum)
				return
			}
			if thin && i%2 == 0 {
				if _, ok := s.run("mv", dst, dst+".moved"); !ok || !s.absent(dst, "mv") {
					return
				}
				dst += ".moved"
			}
			if _, ok := s.run("cp", dst, out); !ok {
				return
			}
			if sum, ok := s.sum(out); !ok || sum != src.sum {
				s.failf("%s: sha256 %s after cp out of %s, want %s (%s)", out, sum, dst, src.sum, src.path)
				return
			}
			if thin {
				if _, ok := s.run("rm", dst); !ok || !s.absent(dst, "rm") {
					return
				}
			}
			s.count(map[bool]string{false: "copy in+out linear", true: "copy in+out thin"}[thin])
		}
	}
}

// fioJobs are the fio runs each fio worker cycles through: random writes
// of 4k-1M at depth 1 and 32, sequential 64k-1M at 16, 4k at 16. Each run
// writes its span, then reads it back and checks every block (--verify:
// the block's checksum, offset and generation are in its header).
var fioJobs = [][]string{
	{"--rw=randwrite", "--bsrange=4k-1m", "--iodepth=1", "--size=24m"},
	{"--rw=randwrite", "--bsrange=4k-1m", "--iodepth=32", "--size=32m"},
	{"--rw=write", "--bsrange=64k-1m", "--iodepth=16", "--size=32m"},
	{"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=8m"},
}

// fio runs fio --verify on file (96 MiB) in a loop, each run at another
// of three offsets.
func (s *soak) fio(file string) func() {
	i := 0
	return func() {
		for !s.stopped() {
			args := append([]string{"--name=soak", "--filename=" + s.m.path(file), "--ioengine=libaio", "--direct=1",
				"--verify=crc32c", "--verify_fatal=1", "--output-format=terse",
				fmt.Sprintf("--offset=%dm", i%3*32), fmt.Sprintf("--randseed=%d", i+1)}, fioJobs[i%len(fioJobs)]...)
			i++
			if _, ok := s.run("fio", args...); !ok {
				return
			}
			s.count("fio --verify " + file)
		}
	}
}

// metaFile is what a metadata worker knows one of its files must show.
type metaFile struct {
	name  string
	mode  string // stat %a
	xattr string // user.soak; "" for none
	sum   string
}

var soakModes = []string{"600", "640", "644", "604", "660"}

// metaWorker makes n small thin files of its own (one more at each step
// until it has them) and, on one of them at a time, chmods, sets and removes user.soak, renames it away and back,
// replaces it by a new file (mv over it), creates and removes another
// file; after each step it checks the file's mode, size and xattr (and
// every few steps its bytes) with stat, getfattr and sha256sum.
func (s *soak) metaWorker(w, n int, blobs []source) func() {
	files := make([]*metaFile, n)
	rng := rand.New(rand.NewPCG(uint64(w), 11))
	check := func(f *metaFile, bytes bool) bool {
		p := s.m.path(f.name)
		out, ok := s.run("stat", "-c", "%a %s", p)
		if !ok {
			return false
		}
		if want := fmt.Sprintf("%s %d", f.mode, blobs[0].size); strings.TrimSpace(out) != want {
			s.failf("%s: stat says %q, want %q", p, strings.TrimSpace(out), want)
			return false
		}
		out, err := try("getfattr", "--only-values", "--absolute-names", "-n", "user.soak", p)
		switch {
		case f.xattr == "" && (err == nil || !strings.Contains(out, "No such attribute")):
			s.failf("%s: getfattr user.soak after its removal: %v: %q, want No such attribute", p, err, out)
			return false
		case f.xattr != "" && (err != nil || out != f.xattr):
			s.failf("%s: getfattr user.soak: %v: %q, want %q", p, err, out, f.xattr)
			return false
		}
		if bytes {
			if sum, ok := s.sum(p); !ok || sum != f.sum {
				s.failf("%s: sha256 %s, want %s", p, sum, f.sum)
				return false
			}
		}
		return true
	}
	made, step := 0, 0
	return func() {
		for !s.stopped() {
			if made < n {
				f := &metaFile{name: fmt.Sprintf("m%d-%d", w, made), mode: "644", sum: blobs[made%2].sum}
				if _, ok := s.run("cp", blobs[made%2].path, s.m.path(f.name)); !ok || !check(f, false) {
					return
				}
				files[made] = f
				made++
				s.count("create")
			}
			f := files[rng.IntN(made)]
			p := s.m.path(f.name)
			step++
			var ok bool
			switch kind := step % 6; kind {
			case 0:
				f.mode = soakModes[rng.IntN(len(soakModes))]
				_, ok = s.run("chmod", f.mode, p)
				s.count("chmod")
			case 1:
				f.xattr = fmt.Sprintf("w%d-step%d", w, step)
				_, ok = s.run("setfattr", "-n", "user.soak", "-v", f.xattr, p)
				s.count("setfattr")
			case 2:
				if f.xattr == "" {
					f.xattr = strings.Repeat("x", 100+step%300)
					_, ok = s.run("setfattr", "-n", "user.soak", "-v", f.xattr, p)
				} else {
					f.xattr = ""
					_, ok = s.run("setfattr", "-x", "user.soak", p)
				}
				s.count("setfattr")
			case 3:
				_, ok = s.run("mv", p, p+".away")
				ok = ok && s.absent(p, "mv")
				if ok {
					_, ok = s.run("mv", p+".away", p)
				}
				ok = ok && s.absent(p+".away", "mv")
				s.count("mv and back")
			case 4:
				// A new file replaces this one: its bytes, its mode, no xattr.
				blob := blobs[step%2]
				tmp := s.m.path(fmt.Sprintf("m%d-new", w))
				_, ok = s.run("cp", blob.path, tmp)
				if ok {
					_, ok = s.run("chmod", "640", tmp)
				}
				if ok {
					_, ok = s.run("mv", tmp, p)
				}
				ok = ok && s.absent(tmp, "mv")
				f.mode, f.xattr, f.sum = "640", "", blob.sum
				s.count("create + mv over")
			case 5:
				tmp := s.m.path(fmt.Sprintf("m%d-tmp", w))
				_, ok = s.run("touch", tmp)
				if ok {
					_, ok = s.run("stat", tmp)
				}
				if ok {
					_, ok = s.run("rm", tmp)
				}
				ok = ok && s.absent(tmp, "rm")
				s.count("create + rm")
			}
			if !ok || !check(f, step%4 == 0) {
				return
			}
		}
	}
}

// lister lists the mount, stats every file and asks the server for its
// status, over and over, while the files come and go.
func (s *soak) lister() func() {
	return func() {
		for !s.stopped() {
			out, err := try("ls", "-l", s.m.dir)
			s.onlyVanished("ls", out, err)
			for _, f := range []string{" lin-fio\n", " lin-copy\n", " thin-fio\n"} {
				if !strings.Contains(out, f) {
					s.failf("ls -l of the mount does not list%s%s", f, out)
				}
			}
			out, err = try("sh", "-c", `stat -c '%n %s %a' "$1"/*`, "sh", s.m.dir)
			s.onlyVanished("stat", out, err)
			for _, f := range []string{"lin-fio", "thin-fio"} {
				if out, ok := s.run("stat", "-c", "%s", s.m.path(f)); ok && strings.TrimSpace(out) != strconv.Itoa(96*mib) {
					s.failf("%s: size %s, want %d", f, out, 96*mib)
				}
			}
			s.run(volfsBin, "status", "--json", s.m.dir)
			s.count("ls -l + stat * + status")
			select {
			case <-s.stop:
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// sample reads the server's resources: RSS and threads from
// /proc/PID/status, fds from /proc/PID/fd (before the scrape, whose
// connection is one more), goroutines and counters from its metrics.
func (s *soak) sample() (usage, error) {
	var u usage
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.pid))
	if err != nil {
		return u, fmt.Errorf("the server's fds: %w", err)
	}
	u.fds = len(fds)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid))
	if err != nil {
		return u, fmt.Errorf("the server's status: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSuffix(strings.TrimSpace(v), " kB")
		switch k {
		case "VmRSS":
			u.rssKiB, _ = strconv.Atoi(v)
		case "Threads":
			u.threads, _ = strconv.Atoi(v)
		}
	}
	u.readers = s.fuseReaders()
	mt, err := metrics(s.metrics)
	if err != nil {
		return u, err
	}
	u.goroutines = int(mt["go_goroutines"])
	u.heapMiB = mt["go_memstats_heap_inuse_bytes"] / mib
	u.handles = int(mt["volfs_open_handles"])
	for k, v := range mt {
		if strings.HasPrefix(k, "volfs_requests_total{") {
			u.requests += v
		}
		if strings.HasPrefix(k, "volfs_errors_total{") && v > 0 {
			u.errors += v
			u.errorsBy = append(u.errorsBy, fmt.Sprintf("%s=%.0f", strings.TrimPrefix(k, "volfs_errors_total"), v))
		}
	}
	if u.rssKiB == 0 || u.threads == 0 || u.goroutines == 0 {
		return u, fmt.Errorf("no RSS, threads or goroutines in the sample: %v", u)
	}
	return u, nil
}

// fuseReaders counts the server's threads waiting in read(2) (syscall 0)
// on its /dev/fuse descriptor: a goroutine in a syscall holds its thread.
func (s *soak) fuseReaders() int {
	fd := -1
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.pid))
	for _, f := range fds {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", s.pid, f.Name())); l == "/dev/fuse" {
			fd, _ = strconv.Atoi(f.Name())
		}
	}
	n := 0
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/syscall", s.pid))
	for _, p := range tasks {
		if b, err := os.ReadFile(p); err == nil && strings.HasPrefix(string(b), fmt.Sprintf("0 %#x ", fd)) {
			n++
		}
	}
	return n
}

// phase runs the workers for d (or until one fails), sampling the server
// every 5 s; it returns the samples.
func (s *soak) phase(d time.Duration, workers []func()) []usage {
	s.stop, s.stopOnce = make(chan struct{}), &sync.Once{}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w()
		}()
	}
	var samples []usage
	var serr error
	start := time.Now()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	end := time.After(d)
	for !s.stopped() {
		select {
		case <-tick.C:
			u, err := s.sample()
			if err != nil {
				serr = err
				s.halt()
				break
			}
			u.at = time.Since(start)
			samples = append(samples, u)
		case <-end:
			s.halt()
		case <-s.stop:
		}
	}
	wg.Wait()
	if serr != nil {
		s.t.Fatalf("sampling the server (pid %d) during the load: %v", s.pid, serr)
	}
	if s.t.Failed() {
		s.t.FailNow()
	}
	return samples
}

// idle waits until the server has no open handle and returns the least
// goroutines (besides the fuse readers) and fds of 10 samples a second apart: an idle server still
// runs lvm commands now and then (the pool report each scrape may ask
// for, a refresh of the listing), and each has goroutines and pipes while
// it runs; what is in every sample stays. With enough, it samples on
// until enough holds of that least (the goroutines and fds back to a
// baseline), for at most 3 minutes; the caller asserts on what it returns.
func (s *soak) idle(what string, enough func(usage) bool) usage {
	s.t.Helper()
	start := time.Now()
	var low usage
	for {
		low = usage{goroutines: math.MaxInt, fds: math.MaxInt}
		for n := 0; n < 10; {
			time.Sleep(time.Second)
			u, err := s.sample()
			if err != nil {
				s.t.Fatalf("sampling the server (pid %d) %s: %v", s.pid, what, err)
			}
			if u.handles > 0 && time.Since(start) < 3*time.Minute {
				n, low = 0, usage{goroutines: math.MaxInt, fds: math.MaxInt}
				continue
			}
			if u.others() > low.others() {
				u.goroutines, u.readers = low.goroutines, low.readers
			}
			u.fds = min(u.fds, low.fds)
			low = u
			n++
		}
		if enough(low) || time.Since(start) > 3*time.Minute {
			break
		}
	}
	s.t.Logf("%s, %v later: %v", what, time.Since(start).Round(time.Second), low)
	return low
}

// TestSoak: two fio --verify loops (a linear and a thin file; 4k-1M
// random at depth 1 and 32, sequential at 16, 4k at 16; libaio, O_DIRECT),
// two copy loops (into and out of a linear file and new thin files,
// sha256-checked), three metadata loops on 6 files each and a lister, all
// at once on one mount for VOLFS_SOAK_DURATION. First a warm-up (a sixth
// of the time, 20 s to 1 min), then the server goes idle (the baseline),
// then the main load, then idle again. No command fails, no byte differs;
// idle after the load, the server has the baseline's fds and goroutines
// again (a leak per request or per open would show as hundreds); during
// the load, the late third of the samples has no more threads and RSS
// than the early third allows.
func TestSoak(t *testing.T) {
	total := soakDuration(t)
	e := newVG(t)
	e.thinPool("pool", "1g")
	sh(t, "lvcreate", "-q", "-L", "96m", "-n", "lin-fio", e.vg)
	sh(t, "lvcreate", "-q", "-L", "64m", "-n", "lin-copy", e.vg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	m := e.mount("--thin-pool", "pool", "--metrics", addr)
	s := &soak{t: t, e: e, m: m, pid: m.serverPid(), metrics: addr, ops: map[string]int{}}
	sh(t, "truncate", "-s", "96M", m.path("thin-fio"))

	srcs := []source{s.source("s1", 3*mib+123, 1), s.source("s2", 12*mib+4321, 2), s.source("s3", 24*mib, 3)}
	blobs := []source{s.source("b1", 64*kib+17, 4), s.source("b2", 64*kib+17, 5)}
	workers := []func(){s.fio("lin-fio"), s.fio("thin-fio"), s.copier(false, srcs), s.copier(true, srcs), s.lister()}
	for w := range 3 {
		workers = append(workers, s.metaWorker(w, 6, blobs))
	}
	warm := min(max(total/6, 20*time.Second), time.Minute)
	settled := func(usage) bool { return true }
	start := s.idle("before the load", settled)
	s.phase(warm, workers)
	base := s.idle("after the warm-up", settled)
	samples := s.phase(total-warm, workers)
	// Back to the baseline, or a leak.
	end := s.idle("after the load", func(u usage) bool {
		return u.fds <= base.fds+2 && u.others() <= base.others()+3
	})

	t.Logf("samples (before the load, after a %v warm-up, during %v of load, after it):", warm, total-warm)
	t.Logf("  start  %v", start)
	t.Logf("  base   %v", base)
	for _, u := range samples {
		t.Logf("  load   %v", u)
	}
	t.Logf("  end    %v", end)
	for _, k := range slices.Sorted(maps.Keys(s.ops)) {
		t.Logf("  %5d  %s", s.ops[k], k)
	}
	slices.Sort(end.errorsBy)
	t.Logf("  %.0f requests in the main load, %.0f failed (all phases): %v", end.requests-base.requests, end.errors, end.errorsBy)
	// Nothing in the load is meant to fail: an answer (a missing name, an
	// absent or unsupported xattr) is not counted as an error. Before
	// ls -l's ACL and SELinux queries were such answers, 3-8 per run were.
	if end.errors != 0 {
		t.Errorf("%.0f FUSE requests failed under the load, by operation: %v", end.errors, end.errorsBy)
	}

	// Idle after the load: what the load opened is closed, what it
	// started has ended.
	if end.handles != 0 {
		t.Errorf("open handles after the load: %d, want 0", end.handles)
	}
	if end.fds > base.fds+2 {
		t.Errorf("the server has %d fds after the load, %d after the warm-up: a leak", end.fds, base.fds)
	}
	if end.others() > base.others()+3 {
		t.Errorf("the server has %d goroutines besides its fuse readers after the load, %d after the warm-up: a leak "+
			"(its goroutines are in its log)", end.others(), base.others())
		// The Go runtime writes every goroutine to the server's stderr,
		// its log, and exits.
		_ = syscall.Kill(s.pid, syscall.SIGQUIT)
		waitFor(t, "the server dumped its goroutines", 30*time.Second, func() bool { return gone(s.pid) })
	}
	// During the load: the last third of the samples against the first.
	if len(samples) < 6 {
		t.Fatalf("only %d samples during the load", len(samples))
	}
	third := len(samples) / 3
	early, late := samples[:third], samples[len(samples)-third:]
	peak := func(us []usage, f func(usage) int) int {
		n := 0
		for _, u := range us {
			n = max(n, f(u))
		}
		return n
	}
	rss := func(u usage) int { return u.rssKiB }
	threads := func(u usage) int { return u.threads }
	if e, l := peak(early, rss), peak(late, rss); l > e*3/2+32*1024 {
		t.Errorf("the server's RSS grew under steady load: %d MiB late, %d MiB early", l/1024, e/1024)
	}
	if e, l := peak(early, threads), peak(late, threads); l > e*3/2+8 {
		t.Errorf("the server's threads grew under steady load: %d late, %d early", l, e)
	}
	if end.rssKiB > peak(samples, rss)*3/2+32*1024 {
		t.Errorf("the server's RSS after the load: %d MiB, peak during it %d MiB", end.rssKiB/1024, peak(samples, rss)/1024)
	}

	// The files are still what they were made to be.
	lvs, _ := e.lvs()
	if lvs["lin-fio"].SegType != "linear" || lvs["lin-copy"].SegType != "linear" || lvs["thin-fio"].SegType != "thin" {
		t.Errorf("segment types after the load: lin-fio %q, lin-copy %q, thin-fio %q", lvs["lin-fio"].SegType,
			lvs["lin-copy"].SegType, lvs["thin-fio"].SegType)
	}
	if m.logHas("level=ERROR") {
		t.Errorf("the server logged errors:\n%s", m.logText())
	}
}
