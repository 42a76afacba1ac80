package multihost

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Sync is a rendezvous between the guests of one run: a step is reached when
// a file named after it exists in a directory they share (9p, which has no
// inotify across guests: waiting polls).
type Sync struct {
	// Dir is the shared directory; Self names this host in its markers.
	Dir, Self string
	// Peer names the other host: a failure it signalled ends a wait at
	// once instead of at its timeout.
	Peer string
}

// pollEvery is how often Wait looks (a stat over 9p costs little).
const pollEvery = 200 * time.Millisecond

// Signal marks step name as reached; the file holds who reached it, when.
func (s Sync) Signal(name string) error {
	body := fmt.Sprintf("%s %s\n", s.Self, time.Now().UTC().Format(time.RFC3339Nano))
	tmp := filepath.Join(s.Dir, "."+name+"."+s.Self)
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.Dir, name))
}

// Fail tells the peer that this host gave up (its waits end at once).
func (s Sync) Fail(why string) {
	_ = os.WriteFile(filepath.Join(s.Dir, "failed-"+s.Self), []byte(why+"\n"), 0o644)
}

// Wait returns when step name is reached, or an error after timeout or as
// soon as the peer signals a failure.
func (s Sync) Wait(name string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		if _, err := os.Stat(filepath.Join(s.Dir, name)); err == nil {
			return time.Since(start), nil
		}
		if s.Peer != "" {
			if why, err := os.ReadFile(filepath.Join(s.Dir, "failed-"+s.Peer)); err == nil {
				return time.Since(start), fmt.Errorf("waiting for %q: %s failed: %s", name, s.Peer, why)
			}
		}
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("waiting for %q: not reached after %v", name, timeout)
		}
		time.Sleep(pollEvery)
	}
}
