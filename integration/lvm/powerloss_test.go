package lvm

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volfs/volfs/integration/vm"
)

// The power-loss test runs in two boots of the guest over one disk image:
// the host part (VOLFS_POWERLOSS=run, make faulttest) boots the guest with
// VOLFS_POWERLOSS=1, which writes through volfs and resets the machine
// with sysrq (no sync, no unmount: what only the guest's RAM held is lost),
// then boots it again over the same image with VOLFS_POWERLOSS=2, which
// activates the VG, mounts it and checks what survived. The two boots
// share a host directory where the first writes its log of writes and
// acknowledged fsyncs (9p without a cache: each line is on the host when
// its write returns).
//
// QEMU runs the disk with cache=unsafe (vmrun.sh's default): it ignores
// the guest's flushes, but every write the guest sent reaches the image
// file in the host's page cache, and the host keeps its power, so a reset
// loses exactly what the guest kernel had not yet sent to the disk (its
// page cache, dm-thin's uncommitted mappings, volfs's memory), not a
// disk's volatile write cache.
const powerLossVG = vgPrefix + "power"

// The files of the power-loss test: a thin file that grows 256 KiB at a
// time (through geometric growth steps of its LV), a thin file of fixed
// size and a linear LV, the last two rewritten one block at a time in
// passes of random order. fsync after every perSync blocks, then (unsynced)
// none; the thin file of fixed size keeps its fsyncs to the end, so that
// the reset comes soon after one (before dm-thin's own commit, once a
// second, would save its blocks' mappings).
type powerFile struct {
	name     string
	no       uint64
	blocks   int // a pass of rewrites; the growing file appends up to this
	grow     bool
	perWrite int // blocks per pwrite
	perSync  int // blocks per fsync
	minSyncs int // fsyncs before the unsynced writes begin
	syncAll  bool
}

var powerFiles = []powerFile{
	{"grow", 1, 16384, true, 64, 64, 20, false}, // 20 fsyncs: 5 MiB, past the first extent
	{"thin", 2, 16384, false, 1, 16, 12, true},  // 64 MiB: its first pass maps new chunks to the end
	{"lin", 3, 2048, false, 1, 16, 12, false},
}

// write w of f: which block, and its generation.
func (f powerFile) write(w int) (idx int, gen uint64) {
	if f.grow {
		return w, 1
	}
	pass := w / f.blocks
	return f.perm(pass)[w%f.blocks], uint64(pass + 1)
}

var permCache sync.Map

func (f powerFile) perm(pass int) []int {
	key := fmt.Sprint(f.no, pass)
	if p, ok := permCache.Load(key); ok {
		return p.([]int)
	}
	p := rand.New(rand.NewPCG(f.no, uint64(pass))).Perm(f.blocks)
	permCache.Store(key, p)
	return p
}

// TestFaultPowerLoss: the guest reset (sysrq b, as a power loss) while
// volfs files are written, some fsync'ed, some not; after the next boot,
// `vgchange -ay` and `volfs mount`, every block fsync acknowledged holds
// its last acknowledged write or a later one, every other block its old
// content or one of its writes (never another block's, never torn), each
// file is at least as large as fsync acknowledged, and no hidden LV is left.
func TestFaultPowerLoss(t *testing.T) {
	switch phase := os.Getenv("VOLFS_POWERLOSS"); {
	case phase == "1" && vm.InGuest():
		powerLossWrite(t)
	case phase == "2" && vm.InGuest():
		powerLossCheck(t)
	case phase == "run" && !vm.InGuest():
		powerLossHost(t)
	default:
		t.Skip("needs two boots of the guest over one disk: run it on the host with VOLFS_POWERLOSS=run and " +
			"VOLFS_BIN (make faulttest does)")
	}
}

// powerLossHost boots the guest twice over one disk image.
func powerLossHost(t *testing.T) {
	bin := os.Getenv("VOLFS_BIN")
	if bin == "" {
		t.Fatal("VOLFS_BIN is not set: make build, then VOLFS_BIN=$PWD/bin/volfs")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("needs QEMU: run integration/vm/install-deps.sh")
	}
	self, err := filepath.Abs(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	vmrun, err := filepath.Abs("../vm/vmrun.sh")
	if err != nil {
		t.Fatal(err)
	}
	scratch := os.Getenv("VOLFS_VM_SCRATCH_DIR")
	if scratch == "" {
		scratch = "/var/tmp"
	}
	dir, err := os.MkdirTemp(scratch, "volfs-powerloss-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	img, shared := filepath.Join(dir, "disk.img"), filepath.Join(dir, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 2<<30); err != nil {
		t.Fatal(err)
	}
	boot := func(phase string) (int, string) {
		start := time.Now()
		cmd := exec.Command(vmrun, "-t", "900", "-d", img, "-w", shared, "-l", filepath.Join(dir, "console"+phase),
			"-e", "VOLFS_BIN="+bin, "-e", "VOLFS_POWERLOSS="+phase, "-e", "VOLFS_POWERLOSS_DIR="+shared, "--",
			self, "-test.run", "^TestFaultPowerLoss$", "-test.v", "-test.count=1", "-test.timeout", "13m")
		out, err := cmd.CombinedOutput()
		rc := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			rc = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("vmrun.sh: %v", err)
		}
		t.Logf("boot %s: exit %d after %v", phase, rc, time.Since(start).Round(time.Second))
		return rc, string(out)
	}
	rc, out := boot("1")
	logB, _ := os.ReadFile(filepath.Join(shared, "log"))
	console, _ := os.ReadFile(filepath.Join(dir, "console1"))
	// The guest reset before the test could report a status: vmrun
	// says so with 125.
	if rc != 125 || !strings.Contains(string(logB), "\nreset\n") {
		t.Fatalf("boot 1 (write, then reset) exit %d, want 125 after a reset; its output:\n%s\nlog tail: %s",
			rc, out, tail(string(logB), 400))
	}
	before, _, _ := strings.Cut(out, "vmrun: the guest ended")
	t.Logf("boot 1 (write, then reset; console: %q):\n%s", lastLine(string(console), "sysrq"), before)
	rc, out = boot("2")
	t.Logf("boot 2 (check):\n%s", out)
	if rc != 0 {
		t.Fatalf("boot 2 (check after the power loss) exit %d", rc)
	}
}

func tail(s string, n int) string { return s[max(len(s)-n, 0):] }

func lastLine(s, word string) string {
	out := ""
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, word) {
			out = strings.TrimSpace(l)
		}
	}
	return out
}

// powerEnv is the power-loss test's VG on the guest's first scratch disk,
// the same in both boots.
func powerEnv(t *testing.T) *env {
	disks := vm.RequireScratchDisks(t, 1)
	base, err := os.MkdirTemp(tmpRoot, "t-")
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, vg: powerLossVG, disk: disks[0], disks: disks, base: base}
}

func powerLogPath(t *testing.T) string {
	dir := os.Getenv("VOLFS_POWERLOSS_DIR")
	if dir == "" {
		t.Fatal("VOLFS_POWERLOSS_DIR is not set (the host part sets it)")
	}
	return filepath.Join(dir, "log")
}

// powerLossWrite is boot 1: make the files, write them with fsync for a
// while, then without, and reset the guest while the writes go on.
func powerLossWrite(t *testing.T) {
	e := powerEnv(t)
	t.Cleanup(func() {
		if t.Failed() { // the reset did not happen
			e.cleanup()
		}
	})
	sh(t, "pvcreate", "-q", "-ff", "--yes", e.disk)
	sh(t, "vgcreate", "-q", "-s", strconv.Itoa(extent/kib)+"k", e.vg, e.disk)
	e.thinPool("pool", "512m")
	sh(t, "lvcreate", "-q", "-y", "-L", strconv.Itoa(powerFiles[2].blocks*seqBlockSize/kib)+"k", "-n", "lin", e.vg)
	sh(t, "dd", "if=/dev/zero", "of=/dev/"+e.vg+"/lin", "bs=4k", "count="+strconv.Itoa(powerFiles[2].blocks),
		"oflag=direct", "status=none")
	m := e.mount("--thin-pool", "pool")
	sh(t, "truncate", "-s", strconv.Itoa(powerFiles[1].blocks*seqBlockSize), m.path("thin"))

	logF, err := os.OpenFile(powerLogPath(t), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var logMu sync.Mutex
	logLine := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		if _, err := fmt.Fprintf(logF, format+"\n", args...); err != nil {
			t.Errorf("log: %v", err)
		}
	}
	var syncing atomic.Bool
	syncing.Store(true)
	var writes, syncs [3]atomic.Int64
	for i, pf := range powerFiles {
		flags := os.O_RDWR
		if pf.grow {
			flags |= os.O_CREATE
		}
		f, err := os.OpenFile(m.path(pf.name), flags, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		// W N: writes below N may have started; S N: fsync returned
		// after writes below N (a write is one block).
		go func() {
			for w := 0; ; w += pf.perWrite {
				if w%pf.perSync == 0 {
					logLine("W %d %d", pf.no, w+pf.perSync)
				}
				idx, _ := pf.write(w)
				if pf.grow && idx >= pf.blocks {
					return
				}
				var b []byte
				for j := range pf.perWrite {
					_, gen := pf.write(w + j)
					b = append(b, seqBlock(pf.no, uint64(idx+j), gen)...)
				}
				if _, err := f.WriteAt(b, int64(idx)*seqBlockSize); err != nil {
					logLine("E %d %v", pf.no, err)
					return
				}
				writes[i].Store(int64(w + pf.perWrite))
				if (w+pf.perWrite)%pf.perSync == 0 && (pf.syncAll || syncing.Load()) {
					if err := f.Sync(); err != nil {
						logLine("E %d %v", pf.no, err)
						return
					}
					logLine("S %d %d", pf.no, w+pf.perWrite)
					syncs[i].Add(1)
				}
			}
		}()
	}
	// fsync'ed writes until each file had its fsyncs (the growing file
	// goes through growth steps and size records, the others through
	// part of their first pass), then writes without fsync: the size and
	// blocks written then are in the guest's memory or on the disk, as
	// it happens. Counted, not timed: the guest's speed varies tenfold
	// with the host's load.
	start := time.Now()
	for i := 0; i < len(powerFiles); {
		if syncs[i].Load() >= int64(powerFiles[i].minSyncs) {
			i++
			continue
		}
		if time.Since(start) > 5*time.Minute {
			t.Fatalf("%s: %d fsyncs in 5 minutes", powerFiles[i].name, syncs[i].Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
	syncing.Store(false)
	logLine("nosync")
	// At least 8 s: past the 5 s after which volfs records the size of
	// a file that grows while open.
	unsynced := time.Now()
	var at [3]int64
	for i := range powerFiles {
		at[i] = writes[i].Load()
	}
	for i := 0; i < len(powerFiles); {
		if writes[i].Load() >= at[i]+2*int64(powerFiles[i].perSync) && time.Since(unsynced) > 8*time.Second ||
			time.Since(start) > 6*time.Minute {
			i++
			continue
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Right after an fsync of the thin file: its blocks' new mappings
	// are committed by that fsync's flush and nothing else yet.
	n := syncs[1].Load()
	waitFor(t, "an fsync of the thin file", time.Minute, func() bool { return syncs[1].Load() > n })
	t.Logf("after %v: writes: grow %d, thin %d, lin %d (fsync'ed up to %d, %d, %d); resetting the guest",
		time.Since(start).Round(time.Second), writes[0].Load(), writes[1].Load(), writes[2].Load(), at[0], at[1], at[2])
	logLine("reset")
	if err := os.WriteFile("/proc/sysrq-trigger", []byte("b"), 0); err != nil {
		t.Fatalf("sysrq b: %v", err)
	}
	time.Sleep(60 * time.Second)
	t.Fatal("the guest did not reset")
}

// powerLog is what boot 1 logged of one file: writes below started may
// have been issued, those below acked were fsync'ed.
type powerLog struct{ started, acked int }

func readPowerLog(t *testing.T) map[uint64]*powerLog {
	f, err := os.Open(powerLogPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	logs := map[uint64]*powerLog{}
	for _, pf := range powerFiles {
		logs[pf.no] = &powerLog{}
	}
	s := bufio.NewScanner(f)
	for s.Scan() {
		var kind string
		var no uint64
		var n int
		if _, err := fmt.Sscanf(s.Text(), "%s %d %d", &kind, &no, &n); (err != nil && kind != "E") || logs[no] == nil {
			continue
		}
		switch kind {
		case "E":
			t.Errorf("boot 1: a write or fsync of file %d failed before the reset: %s", no, s.Text())
		case "W":
			logs[no].started = max(logs[no].started, n)
		case "S":
			logs[no].acked = max(logs[no].acked, n)
		}
	}
	return logs
}

// powerLossCheck is boot 2: activate the VG, mount it and check every
// block of every file against boot 1's log.
func powerLossCheck(t *testing.T) {
	e := powerEnv(t)
	t.Cleanup(e.cleanup)
	logs := readPowerLog(t)
	sh(t, "vgchange", "-q", "-ay", e.vg)
	m := e.mount("--thin-pool", "pool")
	for _, pf := range powerFiles {
		l := logs[pf.no]
		if l.acked == 0 {
			t.Fatalf("%s: boot 1 logged no acknowledged fsync", pf.name)
		}
		// For each block: the generation of its last acknowledged
		// write (0: none, the block reads as zeros, its old content),
		// and the generations of its writes after that.
		synced := map[int]uint64{}
		later := map[int][]uint64{}
		minSize := int64(0)
		for w := 0; w < l.started; w++ {
			idx, gen := pf.write(w)
			if idx >= pf.blocks {
				break
			}
			if w < l.acked {
				synced[idx] = gen
				minSize = max(minSize, int64(idx+1)*seqBlockSize)
			} else {
				later[idx] = append(later[idx], gen)
			}
		}
		path := m.path(pf.name)
		sz := size(t, path)
		if sz < minSize {
			t.Errorf("%s: %d bytes after the power loss, fsync acknowledged %d", pf.name, sz, minSize)
		}
		gens := seqGens(t, path, pf.no)
		old, newer, unsynced := 0, 0, 0
		for idx, g := range gens {
			s := synced[idx]
			switch {
			case g == s:
				if _, ok := synced[idx]; ok {
					old++
				}
			case g > s && containsGen(later[idx], g):
				if s > 0 {
					newer++
				} else {
					unsynced++
				}
			default:
				t.Errorf("%s: block %d has generation %d; fsync acknowledged generation %d (0: none), later writes %v",
					pf.name, idx, g, s, later[idx])
			}
		}
		t.Logf("%s: %d bytes (fsync'ed %d); %d writes started, %d fsync'ed; blocks as fsync'ed %d, "+
			"with a later unsynced write %d, written unsynced only %d", pf.name, sz, minSize, l.started, l.acked,
			old, newer, unsynced)
	}
	e.noHiddenLVs("after the power loss")
	t.Logf("server log:\n%s", m.logText())
}

func containsGen(gens []uint64, g uint64) bool {
	for _, x := range gens {
		if x == g {
			return true
		}
	}
	return false
}
