package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/volfs/volfs/internal/control"
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

// copyProgress shows, on a terminal only, how much of a copy the server
// has done: bytes, percentage and rate on one line rewritten in place.
type copyProgress struct {
	w     io.Writer // nil: not a terminal
	msg   string
	start time.Time
	shown bool
}

func newCopyProgress(f *os.File, msg string) *copyProgress {
	p := &copyProgress{msg: msg, start: time.Now()}
	if isTerminal(f) {
		p.w = f
	}
	return p
}

// update draws the server's report p.
func (p *copyProgress) update(pr control.Progress) {
	if p.w == nil || pr.Total <= 0 {
		return
	}
	p.shown = true
	rate := ""
	if s := time.Since(p.start).Seconds(); s >= 1 {
		rate = ", " + humanize.IBytes(uint64(float64(pr.Done)/s)) + "/s"
	}
	fmt.Fprintf(p.w, "\r\033[K%s: %s of %s (%d%%)%s", p.msg, humanize.IBytes(uint64(pr.Done)),
		humanize.IBytes(uint64(pr.Total)), pr.Done*100/pr.Total, rate)
}

// done clears the line.
func (p *copyProgress) done() {
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
