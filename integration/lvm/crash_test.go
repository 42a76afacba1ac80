package lvm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serverPid is the pid the server of m recorded (cmd/volfs pidPath).
func (m *mount) serverPid() int {
	m.e.t.Helper()
	dir := m.dir
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	h := sha256.Sum256([]byte(dir))
	b, err := os.ReadFile(filepath.Join("/run/volfs", hex.EncodeToString(h[:8])+".pid"))
	if err != nil {
		m.e.t.Fatalf("pid file of the server of %s: %v", m.dir, err)
	}
	// "PID START" (cmd/volfs pidfile.go): the start time tells a reused
	// pid from the server.
	pid, err := strconv.Atoi(strings.Fields(string(b) + " x")[0])
	if err != nil || pid <= 0 {
		m.e.t.Fatalf("pid file of the server of %s: %q", m.dir, b)
	}
	return pid
}

// gone reports whether pid has exited (or is a zombie nobody reaped yet).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// crash kills the server with SIGKILL, detaches its dead mount and waits
// until the lvm commands it had started have ended (they outlive it: a
// restarted server must not read the VG half way through one of them;
// systemd's KillMode=control-group gives the same order).
func (m *mount) crash() {
	m.e.t.Helper()
	pid := m.serverPid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		m.e.t.Fatalf("kill -9 %d: %v", pid, err)
	}
	m.crashed(pid)
}

// crashed is crash after the server pid died by itself (a test hook that
// kills it at a chosen point).
func (m *mount) crashed(pid int) {
	m.e.t.Helper()
	waitFor(m.e.t, "server exits after SIGKILL", 10*time.Second, func() bool { return gone(pid) })
	if out, err := exec.Command("umount", "-l", m.dir).CombinedOutput(); err != nil {
		m.e.t.Fatalf("umount -l %s: %v: %s", m.dir, err, out)
	}
	waitFor(m.e.t, "the dead server's lvm commands end", 60*time.Second, func() bool {
		return exec.Command("pgrep", "-x", "lvm").Run() != nil
	})
}

// What close(2) returned survives a SIGKILL of the server: cp's file has
// its size and bytes after the next mount, a touched file exists; on
// linear and thin LVs.
func TestCrashAfterClose(t *testing.T) {
	for _, thin := range []bool{false, true} {
		name := "linear"
		if thin {
			name = "thin"
		}
		t.Run(name, func(t *testing.T) {
			e := newVG(t)
			var m *mount
			if thin {
				e.thinPool("pool", "512m")
				m = e.mount("--thin-pool", "pool")
			} else {
				m = e.mount()
			}
			srcs := map[string]string{
				"four": e.file("four", 4*mib, 1),     // what the issue saw: 0 bytes after the crash
				"odd":  e.file("odd", 3*mib+4321, 2), // a size that is not whole extents
			}
			for n, src := range srcs {
				sh(t, "cp", src, m.path(n))
			}
			sh(t, "touch", m.path("empty"))
			m.crash()
			m.start()
			for n, src := range srcs {
				if got, want := size(t, m.path(n)), size(t, src); got != want {
					t.Errorf("%s: size %d after the crash, want %d", n, got, want)
					continue
				}
				sameData(t, m.path(n), src)
			}
			if !m.has("empty") || size(t, m.path("empty")) != 0 {
				t.Errorf("touched file after the crash: listed %v", m.names())
			}
			// The growth step the crash left is given back at the
			// next last close.
			sh(t, "cat", m.path("odd"))
			e.wantFileLV("odd", 3*mib+4321)
		})
	}
}

// A SIGKILL at any point of `mv a b` over an existing b leaves, after the
// next mount, either the old a and b or b with a's bytes and no a; the
// next mount finishes or undoes the interrupted rename and no hidden LV
// or intent tag is left.
func TestCrashDuringReplace(t *testing.T) { crashDuringReplace(t, 12, false) }

// The same with b open in volfs (a running VM's disk): the replaced LV is
// detached instead of removed, and a crash must not let the next mount
// purge it while b's name is still free.
func TestCrashDuringReplaceOfOpenFile(t *testing.T) { crashDuringReplace(t, 8, true) }

func crashDuringReplace(t *testing.T, iterations int, open bool) {
	if s := os.Getenv("VOLFS_CRASH_ITERATIONS"); s != "" {
		iterations, _ = strconv.Atoi(s)
	}
	e := newVG(t)
	m := e.mount()
	srcA, srcB := e.file("A", mib+11, 1), e.file("B", 2*mib+22, 2)
	shaA, shaB := sha(t, srcA), sha(t, srcB)
	// One rename over an existing file without a crash: how long the
	// kill window is.
	sh(t, "cp", srcA, m.path("x"))
	sh(t, "cp", srcB, m.path("y"))
	start := time.Now()
	sh(t, "mv", m.path("x"), m.path("y"))
	t.Logf("mv over an existing file took %v", time.Since(start).Round(time.Millisecond))
	outcomes := map[string]int{}
	for i := range iterations {
		a, b := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
		sh(t, "cp", srcA, m.path(a))
		sh(t, "cp", srcB, m.path(b))
		var h *holder
		if open {
			h = hold(t, m.path(b), "")
		}
		// An lvm command takes 0.5-1 s in the guest and a replace runs
		// four (lvchange, two lvrename, lvremove): kill points spread
		// over the whole of it, and a little after.
		delay := time.Duration(rand.Int64N(int64(8 * time.Second)))
		mv := exec.Command("mv", m.path(a), m.path(b))
		out := &strings.Builder{}
		mv.Stdout, mv.Stderr = out, out
		if err := mv.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- mv.Wait() }()
		var mvErr error
		mvDone := false
		select {
		case mvErr = <-done:
			mvDone = true
		case <-time.After(delay):
		}
		m.crash()
		if !mvDone {
			mvErr = <-done
		}
		if h != nil {
			_ = h.cmd.Process.Kill() // its fd is on the dead mount
		}
		m.start()

		names := m.names()
		hasA, hasB := m.has(a), m.has(b)
		var outcome string
		switch {
		case !hasA && hasB && sha(t, m.path(b)) == shaA:
			outcome = "new"
		case hasA && hasB && sha(t, m.path(a)) == shaA && sha(t, m.path(b)) == shaB:
			outcome = "old"
		default:
			t.Fatalf("iteration %d (kill after %v, mv done %v: %v %s): a listed %v, b listed %v; files %v; LVs %v",
				i, delay.Round(time.Millisecond), mvDone, mvErr, out, hasA, hasB, names, e.files())
		}
		if mvDone && mvErr == nil && outcome != "new" {
			t.Fatalf("iteration %d: mv returned success before the kill, but the rename is undone", i)
		}
		outcomes[outcome]++
		lvs, _ := e.lvs()
		for n, l := range lvs {
			if strings.Contains(n, "volfs-aside-") || strings.Contains(n, "volfs-deleted-") {
				t.Fatalf("iteration %d (kill after %v): hidden LV %s left after the next mount (tags %v)", i, delay, n, l.Tags)
			}
			for _, tag := range l.Tags {
				if strings.HasPrefix(tag, "volfs-replace=") {
					t.Fatalf("iteration %d (kill after %v): LV %s keeps the intent tag %s", i, delay, n, tag)
				}
			}
		}
		t.Logf("iteration %d: killed after %v (mv done: %v): %s", i, delay.Round(time.Millisecond), mvDone, outcome)
	}
	t.Logf("outcomes of %d kills: %v", iterations, outcomes)
	log := m.logText()
	t.Logf("recoveries logged: finished %d, undone %d, intent dropped %d", strings.Count(log, "finished a rename"),
		strings.Count(log, "undid a rename"), strings.Count(log, "interrupted before it changed anything"))
}

// A file that grows and stays open (no fsync, no close) has its size
// recorded within the commit interval (5 s, as ext4's journal): after a
// SIGKILL the bytes written before it are there. The writer is a process
// that never forks: a fork's close-on-exec of the fd would be a FLUSH,
// which records the size too.
func TestCrashWhileOpen(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("needs python3 for a writer that keeps the file open without forking")
	}
	e := newVG(t)
	m := e.mount()
	src := e.file("src", 3*mib+777, 3)
	writer := exec.Command(py, "-c", `import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
data = open(sys.argv[2], "rb").read()
while data:
    data = data[os.write(fd, data):]
print("written", flush=True)
time.sleep(600)`, m.path("growing"), src)
	stdout, err := writer.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	writer.Stderr = os.Stderr
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = writer.Process.Kill(); _ = writer.Wait() })
	line := make([]byte, 8)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "written\n" {
		t.Fatalf("writer: %q, %v", line, err)
	}
	want := strconv.FormatInt(size(t, src), 10)
	// Within an interval plus an lvchange; the guest's lvm commands are
	// slow when other guests share the host's cores.
	waitFor(t, "size recorded while open", 45*time.Second, func() bool {
		lvs, _ := e.lvs()
		v, ok := lvs["growing"].tag("volfs.size")
		return ok && v == want
	})
	m.crash()
	_ = writer.Process.Kill()
	m.start()
	if got := size(t, m.path("growing")); got != size(t, src) {
		t.Fatalf("size %d after the crash, want %d", got, size(t, src))
	}
	sameData(t, m.path("growing"), src)
}
