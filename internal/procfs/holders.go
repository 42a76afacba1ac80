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
	"sync"
	"time"
)

// Process is a process holding a file.
type Process struct {
	PID     int    `json:"pid"`
	Command string `json:"command"`
}

// scanners bounds the processes examined at once.
const scanners = 8

// Patience is how long a scan waits for one process's /proc entries. A
// process that takes longer is wedged in the kernel (reading its fd table
// waits for a lock it holds, in a FUSE request of a stopped server, say):
// the scan gives up on it and goes on with the others. A scan that is
// merely slow (a loaded machine) is not cut short by it: only the
// caller's context bounds the whole scan.
var Patience = 3 * time.Second

// stuck are the processes a scan has given up on. Their goroutine stays
// blocked until the process moves; later scans skip them instead of
// adding another.
var stuck sync.Map // pid -> struct{}

// FilesUnder returns, for each path under dir that some process has open
// (an fd), the processes holding it, keyed by the path relative to dir.
// complete is false when a process could not be examined before ctx
// ended (or is still stuck from an earlier scan): the holders returned
// are the ones found. A process wedged in the kernel delays nobody beyond
// ctx.
func FilesUnder(ctx context.Context, dir string) (files map[string][]Process, complete bool) {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	return scan(ctx, func(pid int) []string { return openUnder(pid, prefix) })
}

// Users returns the processes that have dir or a path under it open (an
// fd), as their working directory or as their root, sorted by PID;
// complete as for FilesUnder.
func Users(ctx context.Context, dir string) (procs []Process, complete bool) {
	dir = strings.TrimSuffix(dir, "/")
	files, complete := scan(ctx, func(pid int) []string {
		if uses(pid, dir) {
			return []string{""}
		}
		return nil
	})
	return files[""], complete
}

// uses reports whether process pid has an fd, its cwd or its root at dir
// or under it.
func uses(pid int, dir string) bool {
	base := "/proc/" + strconv.Itoa(pid) + "/"
	links := []string{base + "cwd", base + "root"}
	if f, err := os.Open(base + "fd"); err == nil {
		names, _ := f.Readdirnames(-1)
		f.Close()
		for _, n := range names {
			links = append(links, base+"fd/"+n)
		}
	}
	for _, l := range links {
		if t, err := os.Readlink(l); err == nil && (t == dir || strings.HasPrefix(t, dir+"/")) {
			return true
		}
	}
	return false
}

// scan runs examine on every process but this one, a few at a time, and
// returns the processes by each key examine reported for them; complete
// is false when a process did not answer within Patience (or is still
// stuck from an earlier scan), or ctx ended before every process was
// examined.
func scan(ctx context.Context, examine func(pid int) []string) (files map[string][]Process, complete bool) {
	type result struct {
		pid  int
		comm string
		rels []string
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return map[string][]Process{}, false
	}
	self := os.Getpid()
	var pids []int
	complete = true
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if _, ok := stuck.Load(pid); ok {
			complete = false
			continue
		}
		pids = append(pids, pid)
	}

	// running holds when each process's examination started; a process
	// the scan gives up on moves to abandoned (and stuck) and its slot is
	// freed for the next one.
	var (
		mu        sync.Mutex
		running   = map[int]time.Time{}
		abandoned = map[int]bool{}
	)
	ch := make(chan result, len(pids))
	sem := make(chan struct{}, scanners)
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		for _, pid := range pids {
			select {
			case sem <- struct{}{}:
			case <-quit:
				return
			}
			mu.Lock()
			running[pid] = time.Now()
			mu.Unlock()
			go func() {
				r := result{pid: pid, rels: examine(pid)}
				if len(r.rels) > 0 {
					comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
					r.comm = strings.TrimSpace(string(comm))
				}
				mu.Lock()
				defer mu.Unlock()
				if abandoned[pid] {
					stuck.Delete(pid) // its slot was freed when the scan gave up
					return
				}
				delete(running, pid)
				ch <- r // buffered: never blocks
				<-sem
			}()
		}
	}()
	// giveUp abandons the processes examined since before cutoff.
	giveUp := func(cutoff time.Time) (n int) {
		mu.Lock()
		defer mu.Unlock()
		for pid, started := range running {
			if started.Before(cutoff) {
				delete(running, pid)
				abandoned[pid] = true
				stuck.Store(pid, struct{}{})
				<-sem
				n++
			}
		}
		return n
	}

	tick := time.NewTicker(max(Patience/4, time.Millisecond))
	defer tick.Stop()
	files = map[string][]Process{}
	for left := len(pids); left > 0; {
		select {
		case r := <-ch:
			left--
			for _, rel := range r.rels {
				files[rel] = append(files[rel], Process{PID: r.pid, Command: r.comm})
			}
		case now := <-tick.C:
			if n := giveUp(now.Add(-Patience)); n > 0 {
				left -= n
				complete = false
			}
		case <-ctx.Done():
			giveUp(time.Now().Add(time.Hour))
			return files, false
		}
	}
	for _, ps := range files {
		sort.Slice(ps, func(i, j int) bool { return ps[i].PID < ps[j].PID })
	}
	return files, complete
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
