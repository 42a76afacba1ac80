package mountinfo

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	Dir    string // mount point
	FSType string // "fuse.volfs"
	Source string
	// Major, Minor are the st_dev of files in the mount; for FUSE, the
	// connection's number in /sys/fs/fuse/connections.
	Major, Minor uint32
}

// Find returns the mount on top of dir, reading only /proc/self/mountinfo:
// it never touches dir itself, which may be a wedged FUSE mount whose stat
// would never return.
func Find(dir string) (Mount, bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return Mount{}, false
	}
	defer f.Close()
	var found Mount
	ok := false
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		m, valid := parse(s.Text())
		if valid && m.Dir == dir {
			found, ok = m, true // later lines are mounted on top
		}
	}
	return found, ok
}

// FindFUSE returns the FUSE mount on top of dir (the last one mounted
// there of type fuse or fuse.*), reading only /proc/self/mountinfo.
func FindFUSE(dir string) (Mount, bool) {
	all, err := All()
	if err != nil {
		return Mount{}, false
	}
	var found Mount
	ok := false
	for _, m := range all {
		if m.Dir == dir && (m.FSType == "fuse" || strings.HasPrefix(m.FSType, "fuse.")) {
			found, ok = m, true
		}
	}
	return found, ok
}

// fields splits a mountinfo line: the kernel separates its fields with one
// space and escapes only space, tab, newline and backslash in paths, so a
// path may hold any other white space (strings.Fields would split there).
func fields(line string) []string { return strings.Split(line, " ") }

func parse(line string) (Mount, bool) {
	fields := fields(line)
	if len(fields) < 10 {
		return Mount{}, false
	}
	m := Mount{Dir: Unescape(fields[4])}
	if _, err := fmt.Sscanf(fields[2], "%d:%d", &m.Major, &m.Minor); err != nil {
		return Mount{}, false
	}
	// The optional fields, ended by "-", start at the 7th.
	for i := 6; i+2 < len(fields); i++ {
		if fields[i] == "-" {
			m.FSType, m.Source = fields[i+1], Unescape(fields[i+2])
			return m, true
		}
	}
	return Mount{}, false
}

// All returns every mount of /proc/self/mountinfo, in its order (a later
// one is on top of an earlier one at the same directory). Like Find, it
// never touches a mounted directory.
func All() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mount
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if m, ok := parse(s.Text()); ok {
			out = append(out, m)
		}
	}
	return out, s.Err()
}
