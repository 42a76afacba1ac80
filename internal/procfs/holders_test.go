package procfs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestFilesUnder(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "held")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A child holds the file (the scan skips its own process).
	cmd := exec.Command("sleep", "30")
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	files, complete := FilesUnder(ctx, dir)
	if !complete {
		// Another process on this machine is wedged in the kernel:
		// what matters is that the scan ended and found the holder.
		t.Log("scan not complete: some process did not answer in time")
	}
	got := files["held"]
	if len(got) != 1 || got[0].PID != cmd.Process.Pid || got[0].Command != "sleep" {
		t.Errorf("holders of held = %+v, want sleep (pid %d)", got, cmd.Process.Pid)
	}
	if _, complete := FilesUnder(canceled(), dir); complete {
		t.Error("a scan with an ended context claims to be complete")
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// Users finds a process whose working directory is under dir, and one
// holding dir itself open.
func TestUsers(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	inside := exec.Command("sleep", "30")
	inside.Dir = sub
	holding := exec.Command("sleep", "30")
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	holding.ExtraFiles = []*os.File{d}
	for _, c := range []*exec.Cmd{inside, holding} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	}
	d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	procs, _ := Users(ctx, dir)
	found := map[int]bool{}
	for _, p := range procs {
		found[p.PID] = true
	}
	if !found[inside.Process.Pid] || !found[holding.Process.Pid] || len(procs) != 2 {
		t.Errorf("Users = %+v, want pids %d and %d", procs, inside.Process.Pid, holding.Process.Pid)
	}
}

// withPatience sets Patience for one test.
func withPatience(t *testing.T, d time.Duration) {
	old := Patience
	Patience = d
	t.Cleanup(func() { Patience = old })
}

// A process that does not answer is given up on after Patience; the scan
// goes on with the others, skips it while it stays stuck, and examines it
// again once it answers.
func TestScanWedgedProcess(t *testing.T) {
	withPatience(t, 200*time.Millisecond)
	wedged := os.Getppid() // any process but this one
	unblock := make(chan struct{})
	examine := func(pid int) []string {
		if pid == wedged {
			<-unblock
		}
		return []string{"k"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	files, complete := scan(ctx, examine)
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("the scan waited %v for a wedged process (patience %v)", took, Patience)
	}
	if complete {
		t.Error("a scan that gave up on a process claims to be complete")
	}
	if len(files["k"]) == 0 {
		t.Fatal("the scan found none of the other processes")
	}
	for _, p := range files["k"] {
		if p.PID == wedged {
			t.Error("the wedged process was reported")
		}
	}
	// Still stuck: the next scan skips it without waiting.
	start = time.Now()
	if _, complete := scan(ctx, func(int) []string { return nil }); complete {
		t.Error("a scan that skipped a stuck process claims to be complete")
	}
	if took := time.Since(start); took >= Patience {
		t.Errorf("the second scan took %v: it waited for the stuck process again", took)
	}
	close(unblock)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, ok := stuck.Load(wedged); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the process is still marked stuck after it answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, complete := scan(ctx, func(int) []string { return nil }); !complete {
		t.Error("a scan after the process answered is incomplete")
	}
}

// A slow scan is not a wedged one: every process answering within
// Patience makes the scan complete, however long the whole scan takes;
// and scans at the same time do not take each other's processes for
// stuck ones.
func TestScanSlowAndConcurrent(t *testing.T) {
	withPatience(t, 300*time.Millisecond)
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			n++
		}
	}
	// Each process takes a third of Patience: the whole scan takes
	// several times Patience on any machine with a few dozen processes.
	each := Patience / 3
	if n*int(each)/scanners < 2*int(Patience) {
		each = 2 * Patience * scanners / time.Duration(n) // still under Patience for n > 2*scanners
	}
	if each >= Patience {
		t.Skipf("only %d processes here", n)
	}
	examine := func(pid int) []string {
		time.Sleep(each)
		return []string{strconv.Itoa(pid)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type out struct {
		files    map[string][]Process
		complete bool
	}
	outs := make(chan out, 3)
	for range 3 {
		go func() {
			f, c := scan(ctx, examine)
			outs <- out{f, c}
		}()
	}
	for range 3 {
		o := <-outs
		if !o.complete {
			t.Errorf("a slow scan (%v per process, patience %v, 3 at once) is incomplete", each, Patience)
		}
		if len(o.files) < n/2 {
			t.Errorf("a scan found %d of about %d processes", len(o.files), n)
		}
	}
}
