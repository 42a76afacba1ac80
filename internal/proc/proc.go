// Package proc reads what volfs needs to know about processes from /proc:
// whether a process still runs, and its identity (pid and start time), so a
// pid recorded in a file is never taken for a later process that reuses it.
package proc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ID is a process's identity: a pid is reused, a pid with its start time
// (in clock ticks after boot) is not.
type ID struct {
	Pid   int
	Start uint64
}

// Self is the identity of this process.
func Self() (ID, error) { return Of(os.Getpid()) }

// Of returns the identity of the running process pid.
func Of(pid int) (ID, error) {
	state, start, err := stat(pid)
	if err != nil {
		return ID{}, err
	}
	if state == 'Z' || state == 'X' {
		return ID{}, fmt.Errorf("process %d has exited", pid)
	}
	return ID{Pid: pid, Start: start}, nil
}

// Running reports whether the process id still runs (a zombie does not:
// the server was started in the background, and whoever inherited it reaps
// it when it can).
func (id ID) Running() bool {
	if id.Pid <= 0 {
		return false
	}
	now, err := Of(id.Pid)
	return err == nil && now.Start == id.Start
}

// String is the form written in pid and lock files: "PID START".
func (id ID) String() string { return fmt.Sprintf("%d %d", id.Pid, id.Start) }

// Parse reads the form String writes.
func Parse(s string) (ID, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return ID{}, fmt.Errorf("%q is not \"PID START\"", s)
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil || pid <= 0 {
		return ID{}, fmt.Errorf("%q is not \"PID START\"", s)
	}
	return ID{Pid: pid, Start: start}, nil
}

// stat returns the state (field 3) and start time (field 22) of
// /proc/PID/stat. The command name (field 2) may hold spaces and
// parentheses: fields are counted after its last ')'.
func stat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	state, start, err = parseStat(string(b))
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return state, start, nil
}

// parseStat reads the state and start time of a /proc/PID/stat line.
func parseStat(s string) (state byte, start uint64, err error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, errors.New("no command name")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("%d fields", len(f)+2)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("%q", s)
	}
	return f[0][0], start, nil
}
