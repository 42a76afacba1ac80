package main

import (
	"fmt"
	"io"
	"os"
	"time"
)

// waitProgress shows, on a terminal only, that a command is waiting and
// for how long (rsync's and lvm2's habit of one line rewritten in place);
// scripts and logs see nothing.
type waitProgress struct {
	w       io.Writer // nil: not a terminal
	msg     string
	limit   time.Duration
	start   time.Time
	shown   bool
	last    time.Time
	spinner int
}

// progressDelay is how long a wait stays silent: most end before.
const progressDelay = 500 * time.Millisecond

func newWaitProgress(f *os.File, msg string, limit time.Duration) *waitProgress {
	p := &waitProgress{msg: msg, limit: limit, start: time.Now()}
	if isTerminal(f) {
		p.w = f
	}
	return p
}

// tick redraws the line, at most five times a second.
func (p *waitProgress) tick() {
	if p.w == nil {
		return
	}
	now := time.Now()
	if now.Sub(p.start) < progressDelay || now.Sub(p.last) < 200*time.Millisecond {
		return
	}
	p.last, p.shown = now, true
	p.spinner++
	fmt.Fprintf(p.w, "\r\033[K%c %s: %s of at most %s", `|/-\`[p.spinner%4], p.msg,
		now.Sub(p.start).Round(time.Second), p.limit)
}

// done clears the line.
func (p *waitProgress) done() {
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
