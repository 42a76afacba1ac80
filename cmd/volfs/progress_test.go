package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/control"
)

// The copy's progress line: bytes, percent and rate, redrawn in place,
// cleared at the end; nothing when stderr is not a terminal.
func TestCopyProgress(t *testing.T) {
	var b bytes.Buffer
	p := &copyProgress{w: &b, msg: "copying /m/lin", start: time.Now().Add(-2 * time.Second)}
	p.update(control.Progress{Done: 1 << 30, Total: 4 << 30, What: "copy"})
	line := b.String()
	if !strings.HasPrefix(line, "\r\033[Kcopying /m/lin: 1.0 GiB of 4.0 GiB (25%), ") || !strings.HasSuffix(line, "/s") {
		t.Fatalf("progress line %q", line)
	}
	p.done()
	if !strings.HasSuffix(b.String(), "\r\033[K") {
		t.Fatalf("not cleared: %q", b.String())
	}
	quiet := &copyProgress{msg: "x", start: time.Now()}
	quiet.update(control.Progress{Done: 1, Total: 2})
	quiet.done()
}
