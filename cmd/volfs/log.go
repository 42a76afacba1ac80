package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// defaultLogFile is where a background server logs unless told otherwise
// or run by systemd.
const defaultLogFile = "/var/log/volfs.log"

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

func (c *mountCmd) checkLogFlags() error {
	if _, ok := logLevels[c.logLevel]; !ok {
		return usagef("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	return nil
}

// logTarget is the file the server logs to, or "" for stderr. An explicit
// --log-file always wins. Otherwise a server in the foreground logs to
// stderr, and so does one started by systemd (its stderr is the journal,
// as rclone and sshfs do); a background server started from a shell logs
// to /var/log/volfs.log.
func (c *mountCmd) logTarget() string {
	switch {
	case c.logFile != "":
		return c.logFile
	case c.foreground || underSystemd():
		return ""
	}
	return defaultLogFile
}

func openLogFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
}

// logWriter is where the server's log lines go. A log file is reopened at
// the same path on SIGHUP (logrotate renames it, then signals). If the
// server's stderr is that file (a background server), stdout and stderr
// follow it, so that Go's own messages (panics, go-fuse's --debug trace)
// land in the current file too.
type logWriter struct {
	mu   sync.Mutex
	path string   // "" when logging to stderr
	f    *os.File // the open log file, or os.Stderr
	std  bool     // fds 1 and 2 follow the log file
}

func newLogWriter(path string) (*logWriter, error) {
	if path == "" {
		return &logWriter{f: os.Stderr}, nil
	}
	f, err := openLogFile(path)
	if err != nil {
		return nil, fmt.Errorf("log file: %w (choose another with --log-file)", err)
	}
	return &logWriter{path: path, f: f, std: sameFile(f, os.Stderr)}, nil
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f.Write(p)
}

// reopen opens the log file anew at its path; the old one is closed once
// nothing writes to it any more.
func (w *logWriter) reopen() error {
	if w.path == "" {
		return nil
	}
	f, err := openLogFile(w.path)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.std {
		for _, fd := range []int{1, 2} {
			if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
				f.Close()
				return err
			}
		}
	}
	w.f.Close()
	w.f = f
	return nil
}

func (w *logWriter) Close() error {
	if w.path == "" {
		return nil
	}
	return w.f.Close()
}

// sameFile reports whether two open files are the same inode.
func sameFile(a, b *os.File) bool {
	sa, err1 := a.Stat()
	sb, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// newLogger builds the server's logger: text lines on w at the level of
// --log-level (--debug implies debug). Lines to the journal carry the
// syslog priority prefix journald reads (`journalctl -p warning`) and no
// time stamp (the journal has its own).
func (c *mountCmd) newLogger(w io.Writer, journal bool) *slog.Logger {
	level := logLevels[c.logLevel]
	if c.debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if !journal {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	pw := &prefixWriter{w: w}
	return slog.New(&journalHandler{Handler: slog.NewTextHandler(pw, opts), w: pw})
}

// journalHandler prefixes each record with its syslog priority (<3> error,
// <4> warning, <6> info, <7> debug).
type journalHandler struct {
	slog.Handler
	w *prefixWriter
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	prio := "<6>"
	switch {
	case r.Level >= slog.LevelError:
		prio = "<3>"
	case r.Level >= slog.LevelWarn:
		prio = "<4>"
	case r.Level < slog.LevelInfo:
		prio = "<7>"
	}
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	h.w.prefix = prio
	return h.Handler.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{Handler: h.Handler.WithAttrs(as), w: h.w}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{Handler: h.Handler.WithGroup(name), w: h.w}
}

// prefixWriter writes a record's priority and the record in one write, so
// that lines of concurrent goroutines do not interleave.
type prefixWriter struct {
	mu     sync.Mutex // held by journalHandler.Handle around the inner write
	prefix string
	w      io.Writer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// toJournal reports whether stderr is connected to the journal: systemd
// sets JOURNAL_STREAM to the device and inode of the stream it gave the
// service as stdout/stderr.
func toJournal() bool {
	js := os.Getenv("JOURNAL_STREAM")
	if js == "" {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		return false
	}
	return js == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// underSystemd reports whether a systemd unit runs volfs (a service, or
// mount(8) of an fstab line run by a mount unit). A terminal on stderr
// means a person, even in a shell that inherited INVOCATION_ID (systemd-run
// --shell): the background server then logs to its file.
func underSystemd() bool {
	if toJournal() {
		return true
	}
	_, err := unix.IoctlGetTermios(2, unix.TCGETS)
	return os.Getenv("INVOCATION_ID") != "" && err != nil
}

// levelNames lists the --log-level values, for help and completion.
func levelNames() string { return strings.Join([]string{"debug", "info", "warn", "error"}, "|") }
