package procfs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
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
