// Package procfs finds which processes hold files open, from /proc. It
// reads only /proc (never the files themselves, which may be on a mount
// whose server is the caller) and is bounded by its caller's context.
package procfs

import (
	"context"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Process is a process holding a file.
type Process struct {
	PID     int    `json:"pid"`
	Command string `json:"command"`
}

// FilesUnder returns, for each path under dir that some process has open
// (an fd), the processes holding it, keyed by the path relative to dir.
// complete is false when ctx ended before every process was looked at:
// the scan runs in a goroutine of its own, so a /proc read that blocks (a
// process wedged in the kernel) delays nobody beyond ctx.
func FilesUnder(ctx context.Context, dir string) (files map[string][]Process, complete bool) {
	type result struct {
		pid  int
		comm string
		rels []string
	}
	ch := make(chan result, 64)
	go func() {
		defer close(ch)
		ents, err := os.ReadDir("/proc")
		if err != nil {
			return
		}
		self := os.Getpid()
		prefix := strings.TrimSuffix(dir, "/") + "/"
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == self {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			rels := openUnder(pid, prefix)
			if len(rels) == 0 {
				continue
			}
			comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
			select {
			case ch <- result{pid, strings.TrimSpace(string(comm)), rels}:
			case <-ctx.Done():
				return
			}
		}
		select {
		case ch <- result{pid: -1}: // the end of a complete scan
		case <-ctx.Done():
		}
	}()
	files = map[string][]Process{}
	for {
		select {
		case r, ok := <-ch:
			if !ok {
				return files, false
			}
			if r.pid < 0 {
				return files, true
			}
			for _, rel := range r.rels {
				files[rel] = append(files[rel], Process{PID: r.pid, Command: r.comm})
			}
		case <-ctx.Done():
			return files, false
		}
	}
}

// openUnder lists the distinct paths under prefix that process pid has
// open, relative to prefix.
func openUnder(pid int, prefix string) []string {
	fdDir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	f, err := os.Open(fdDir)
	if err != nil {
		return nil
	}
	names, _ := f.Readdirnames(-1)
	f.Close()
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		t, err := os.Readlink(fdDir + n)
		if err != nil || !strings.HasPrefix(t, prefix) {
			continue
		}
		rel := strings.TrimPrefix(t, prefix)
		if strings.HasSuffix(rel, " (deleted)") || seen[rel] {
			continue
		}
		seen[rel] = true
		out = append(out, rel)
	}
	sort.Strings(out)
	return out
}
