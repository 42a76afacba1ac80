package holders

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
)

func TestFind(t *testing.T) {
	testutil.RequireRoot(t)
	dev := testutil.NewLoop(t, 8<<20)
	if who, err := Find(dev, true); err != nil || len(who) != 0 {
		t.Fatalf("an unused device: %q, %v", who, err)
	}

	// Another process holds it.
	sleep := exec.Command("sh", "-c", "exec sleep 60 3<"+dev)
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	want := "held by pid " + strconv.Itoa(sleep.Process.Pid) + " (sleep)"
	// Polls until the shell has become sleep (its comm changes at exec).
	deadline := time.Now().Add(10 * time.Second)
	for {
		who, err := Find(dev, false)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(who, "; ") == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %q, want %q", who, want)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// This process holds it: counted only with self.
	sleep.Process.Kill()
	sleep.Wait()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if who, _ := Find(dev, false); len(who) != 0 {
		t.Errorf("without self: %q", who)
	}
	if who, _ := Find(dev, true); len(who) != 1 || !strings.Contains(who[0], "(this process)") {
		t.Errorf("with self: %q", who)
	}
}
