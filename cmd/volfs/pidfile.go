package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"

	"github.com/volfs/volfs/internal/proc"
)

// runDir holds the servers' pid files and locks; it is a tmpfs that a
// reboot empties.
const runDir = "/run/volfs"

// pidPath is where the server of a mount records its identity.
func pidPath(mnt string) string {
	h := sha256.Sum256([]byte(mnt))
	return filepath.Join(runDir, hex.EncodeToString(h[:8])+".pid")
}

// writePidFile records this server's identity (pid and start time, "PID
// START") for `volfs umount`; remove deletes it at exit.
func writePidFile(mnt string) (remove func(), err error) {
	self, err := proc.Self()
	if err != nil {
		return nil, err
	}
	p := pidPath(mnt)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, err
	}
	removeStalePidFiles()
	tmp := p + ".new"
	if err := os.WriteFile(tmp, []byte(self.String()+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, p); err != nil {
		return nil, err
	}
	return func() { os.Remove(p) }, nil
}

// removeStalePidFiles removes the pid files of servers that are gone (killed
// with SIGKILL, or the pid reused since).
func removeStalePidFiles() {
	files, _ := filepath.Glob(filepath.Join(runDir, "*.pid"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if id, err := proc.Parse(strings.TrimSpace(string(b))); err == nil && !id.Running() {
			os.Remove(f)
		}
	}
}

// mountServer returns the server recorded for mnt if it still runs. A pid
// file whose process is gone (a server killed with SIGKILL), or whose pid
// now belongs to another process, is removed.
func mountServer(mnt string) (proc.ID, bool) {
	p := pidPath(mnt)
	b, err := os.ReadFile(p)
	if err != nil {
		return proc.ID{}, false
	}
	id, err := proc.Parse(strings.TrimSpace(string(b)))
	if err != nil { // not ours to judge; leave it
		return proc.ID{}, false
	}
	if !id.Running() {
		os.Remove(p)
		return proc.ID{}, false
	}
	return id, true
}
