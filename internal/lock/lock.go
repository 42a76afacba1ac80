// Package lock keeps two volfs servers from serving one thing (a device, a
// volume group) at once: an flock(2) on a file under a directory of
// /run, which the kernel drops when the holding process dies, however it
// dies. The exclusive holder writes what it serves from (its mount point)
// and its identity into the file, so a refused server can name it.
package lock

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/proc"
)

// Holder is who holds a lock: a server and its mount point.
type Holder struct {
	Mount string
	Proc  proc.ID
}

// HeldError says a lock is held by another server.
type HeldError struct {
	Key    string
	Holder Holder // zero when the holder did not say (a shared holder)
}

func (e *HeldError) Error() string {
	if e.Holder.Mount == "" {
		return fmt.Sprintf("%s is held by another volfs server", e.Key)
	}
	return fmt.Sprintf("%s is served by the volfs mount at %s (pid %d)", e.Key, e.Holder.Mount, e.Holder.Proc.Pid)
}

// Lock is one held lock; Close releases it.
type Lock struct {
	f      *os.File
	path   string
	shared bool
}

// Close releases the lock and removes its file when no one else holds it.
// Lock files are only ever removed by a holder of an exclusive lock on
// them, and Take checks after locking that its file is still the one at
// the path, so removal never lets two servers hold "one" lock.
func (l *Lock) Close() error {
	if !l.shared || unix.Flock(int(l.f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		os.Remove(l.path)
	}
	return l.f.Close()
}

func path(dir, key string) string {
	h := sha256.Sum256([]byte(key))
	return filepath.Join(dir, hex.EncodeToString(h[:12])+".lock")
}

// Take locks key without waiting, shared or exclusive. An exclusive holder
// records h. A lock held in a conflicting way gives a *HeldError.
func Take(dir, key string, shared bool, h Holder) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock directory %s: %w", dir, err)
	}
	removeStale(dir)
	p := path(dir, key)
	for {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", key, err)
		}
		how := unix.LOCK_EX
		if shared {
			how = unix.LOCK_SH
		}
		if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
			if errors.Is(err, unix.EWOULDBLOCK) && !linked(f, p) {
				f.Close() // a sweeper (removeStale) had it: again
				continue
			}
			defer f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				he := &HeldError{Key: key}
				if k, holder, ok := read(f); ok && k == key && holder.Proc.Running() {
					he.Holder = holder
				}
				return nil, he
			}
			return nil, fmt.Errorf("lock %s: %w", key, err)
		}
		if !linked(f, p) { // removed by its last holder meanwhile: again
			f.Close()
			continue
		}
		// A former exclusive holder's words are stale now: clear them.
		if err := f.Truncate(0); err == nil && !shared {
			b := fmt.Sprintf("%s\n%s\n%s\n", key, h.Mount, h.Proc)
			_, _ = f.WriteAt([]byte(b), 0)
		}
		return &Lock{f: f, path: p, shared: shared}, nil
	}
}

// linked reports whether f is still the file at p.
func linked(f *os.File, p string) bool {
	var a, b unix.Stat_t
	return unix.Fstat(int(f.Fd()), &a) == nil && unix.Stat(p, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino
}

// removeStale removes the lock files of servers that died without
// releasing them (their locks went with them).
func removeStale(dir string) {
	held := flocked()
	files, _ := filepath.Glob(filepath.Join(dir, "*.lock"))
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(int(f.Fd()), &st) == nil && !held[lockID(st)] &&
			unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil && linked(f, p) {
			os.Remove(p)
		}
		f.Close()
	}
}

func lockID(st unix.Stat_t) string {
	return fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
}

func read(f *os.File) (key string, h Holder, ok bool) {
	if _, err := f.Seek(0, 0); err != nil {
		return "", h, false
	}
	s := bufio.NewScanner(f)
	var lines []string
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	if len(lines) != 3 {
		return "", h, false
	}
	id, err := proc.Parse(lines[2])
	if err != nil {
		return "", h, false
	}
	return lines[0], Holder{Mount: lines[1], Proc: id}, true
}

// Held lists the running exclusive holders of the locks under dir whose key
// starts with prefix. It looks at /proc/locks rather than trying the locks:
// a lock taken only to test it could refuse a server starting meanwhile.
func Held(dir, prefix string) []Holder {
	held := flocked()
	files, _ := filepath.Glob(filepath.Join(dir, "*.lock"))
	var out []Holder
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		k, h, ok := read(f)
		var st unix.Stat_t
		locked := unix.Fstat(int(f.Fd()), &st) == nil && held[lockID(st)]
		f.Close()
		if ok && locked && strings.HasPrefix(k, prefix) && h.Proc.Running() {
			out = append(out, h)
		}
	}
	return out
}

// flocked returns the files that have an flock(2) lock, as /proc/locks
// names them ("MAJ:MIN:INODE", the device numbers in hex).
func flocked() map[string]bool {
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; blocked
		// waiters have "->" after the number.
		if len(f) >= 6 && f[1] == "FLOCK" {
			out[f[5]] = true
		}
	}
	return out
}
