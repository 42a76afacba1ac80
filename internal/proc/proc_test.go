package proc

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// FuzzParse reads arbitrary pid and lock file contents ("PID START", as
// volfs umount and the mount lock read them): no panic, a positive pid,
// and what it accepts prints back (String) to an equal identity.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"4711 123456", " 1\t2\n", "0 5", "-3 1", "+3 1", "1 18446744073709551616", "9223372036854775808 1", "1 2 3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		if id.Pid <= 0 {
			t.Fatalf("Parse(%q) = %+v", s, id)
		}
		if again, err := Parse(id.String()); err != nil || again != id {
			t.Fatalf("Parse(%q) = %+v, printed %q: %+v %v", s, id, id.String(), again, err)
		}
	})
}

// FuzzStat reads arbitrary /proc/PID/stat lines: no panic, and the state
// and start time are the 3rd and 22nd fields counted after the command
// name, whatever spaces and parentheses the name holds.
func FuzzStat(f *testing.F) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(b), "a) (b", byte('S'), uint64(77))
	f.Add("1 (x", "", byte('R'), uint64(0))
	f.Fuzz(func(t *testing.T, line, comm string, state byte, start uint64) {
		_, _, _ = parseStat(line)
		if state <= ' ' || state == ')' || state >= 0x7f {
			return
		}
		// The kernel's line: comm is at most 16 bytes and has no newline.
		comm = strings.ReplaceAll(comm, "\n", "")
		rest := []string{string(state)}
		for i := 4; i < 22; i++ {
			rest = append(rest, strconv.Itoa(i))
		}
		rest = append(rest, strconv.FormatUint(start, 10), "23", "24")
		l := "42 (" + comm + ") " + strings.Join(rest, " ") + "\n"
		if st, sta, err := parseStat(l); err != nil || st != state || sta != start {
			t.Fatalf("parseStat(%q) = %c %d %v", l, st, sta, err)
		}
	})
}
