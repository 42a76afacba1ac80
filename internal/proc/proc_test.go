package proc

import (
	"os"
	"os/exec"
	"testing"
)

func TestIdentity(t *testing.T) {
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if self.Pid != os.Getpid() || !self.Running() {
		t.Fatalf("Self() = %+v, not running", self)
	}
	if p, err := Parse(self.String()); err != nil || p != self {
		t.Fatalf("Parse(%q) = %+v, %v", self.String(), p, err)
	}
	// The same pid with another start time is another process (a reused
	// pid); a process that exited is not running.
	if (ID{Pid: self.Pid, Start: self.Start + 1}).Running() {
		t.Error("a pid with another start time counts as running")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if (ID{Pid: cmd.Process.Pid, Start: 1}).Running() {
		t.Error("an exited process counts as running")
	}
	for _, bad := range []string{"", "12", "x 1", "12 y", "0 5", "1 2 3"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}
