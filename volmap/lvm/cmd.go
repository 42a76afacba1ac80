package lvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/volfs/volfs/volmap"
)

// lockConfig makes lvm block on a VG lock held by another tool instead of
// failing at once, whatever lvm.conf says. The wait is bounded by the
// caller's context: cancelling it interrupts lvm (SIGINT), which then
// "gives up waiting for lock" cleanly.
const lockConfig = "global/wait_for_locks=1"

// lockRetries is how often a command that still failed to get a lock
// ("Can't get lock", e.g. an flock interrupted by a signal) is retried.
// Nothing has been changed when lvm reports that, so a retry is safe.
var lockRetries = []time.Duration{200 * time.Millisecond, 500 * time.Millisecond, 1500 * time.Millisecond}

// Runner runs lvm2 commands. The zero value runs "lvm" from $PATH with no
// extra configuration and logs nothing.
type Runner struct {
	// Path is the lvm binary ("lvm" when empty); commands run as
	// "lvm <command> ...".
	Path string
	// Config is extra configuration passed with --config, e.g.
	// "activation/udev_sync=0 activation/udev_rules=0".
	Config string
	// Log receives one debug record per command with its duration.
	Log *slog.Logger
	// CancelGrace is how long a command may take to exit after SIGINT when
	// its context is cancelled before it is killed (30 s when zero). lvm
	// blocks signals while it commits metadata, so it is not cut short.
	CancelGrace time.Duration

	// devices, when set, is passed as --devices (SetDevices).
	devices atomic.Pointer[string]
	// helps holds each command's --help text once read (help).
	helpMu sync.Mutex
	helps  map[string]string
}

// SetDevices limits every later command to the given devices (lvm's
// --devices, lvm2 >= 2.03.12); none: no limit. Devices not listed are
// neither scanned nor used.
func (r *Runner) SetDevices(devs []string) {
	if len(devs) == 0 {
		r.devices.Store(nil)
		return
	}
	s := strings.Join(devs, ",")
	r.devices.Store(&s)
}

// CmdError is a failed lvm2 command.
type CmdError struct {
	// Args is the whole command line, binary included.
	Args []string
	// ExitCode is the exit status, -1 if the command did not run or was
	// killed by a signal.
	ExitCode int
	// Stderr is everything the command wrote to stderr.
	Stderr string
	// Err is the error from running the command (an *exec.ExitError, a
	// missing binary, ...).
	Err error
	// Ctx is the context's error when it ended while the command ran.
	Ctx error
}

func (e *CmdError) Error() string {
	var b strings.Builder
	b.WriteString(shellJoin(e.Args, 300))
	if e.ExitCode >= 0 {
		fmt.Fprintf(&b, ": exit status %d", e.ExitCode)
	} else if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Ctx != nil {
		fmt.Fprintf(&b, " (%v)", e.Ctx)
	}
	if msg := summarize(e.Stderr); msg != "" {
		b.WriteString(": ")
		b.WriteString(msg)
	}
	return b.String()
}

// Unwrap returns the volmap sentinel that stderr indicates (if any), the
// context's error (if it ended) and the underlying error, for errors.Is and
// errors.As.
func (e *CmdError) Unwrap() []error {
	var errs []error
	if s := classify(e.Stderr); s != nil {
		errs = append(errs, s)
	}
	if e.Ctx != nil {
		errs = append(errs, e.Ctx)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// lockFailure reports whether the command failed because it could not get
// an LVM lock (and changed nothing).
//
// On a shared VG that includes lvmlockd's VG and global locks held by
// another host for a moment (lvm retries those itself, a few times, one
// second apart) and a lockspace that is still starting: contention, not an
// error. An LV's lock held by another host ("LV locked by other host") is
// not retried: it is held as long as the LV is active there (ErrInUse).
func (e *CmdError) lockFailure() bool {
	for _, m := range []string{"Can't get lock", "Giving up waiting for lock",
		"lock failed: held by other host", "lock failed: lock start in progress",
		"Global lock failed: lockspace is starting"} {
		if strings.Contains(e.Stderr, m) {
			return true
		}
	}
	return false
}

// patterns map lvm2 messages (lower-cased lines) to sentinels, in
// priority order: a command may print several errors ("... in use" and
// then "Failed to ..."). A pattern matches a line containing all its parts.
var patterns = []struct {
	all []string
	err error
}{
	{[]string{"in use"}, volmap.ErrInUse}, // "Logical volume vg/lv in use.", "contains a filesystem in use"
	{[]string{"used by another device"}, volmap.ErrInUse},
	{[]string{"open logical volume"}, volmap.ErrInUse},  // "Can't remove open logical volume"
	{[]string{"locked by other host"}, volmap.ErrInUse}, // lvmlockd: the LV is active on another host
	// lvmlockd: lvresize of an LV this host has active shared (--live-migration)
	{[]string{"locked with incompatible mode"}, volmap.ErrInUse},
	{[]string{"already exists"}, volmap.ErrExists},
	{[]string{"insufficient free space"}, volmap.ErrNoSpace},
	{[]string{"insufficient suitable"}, volmap.ErrNoSpace}, // "... allocatable extents"
	{[]string{"insufficient allocatable"}, volmap.ErrNoSpace},
	{[]string{"thin pool", "reached threshold"}, volmap.ErrNoSpace},
	{[]string{"out of data space"}, volmap.ErrNoSpace},
	{[]string{"out of metadata space"}, volmap.ErrNoSpace},
	{[]string{"exceeds maximum metadata size"}, volmap.ErrNoSpace}, // VG metadata area full (tags)
	{[]string{"name", "too long"}, volmap.ErrNameTooLong},
	{[]string{"name", "may not exceed"}, volmap.ErrNameTooLong},             // lvrename
	{[]string{"name", "length", "is not supported"}, volmap.ErrNameTooLong}, // lvcreate: VG+LV too long
	{[]string{"names", "are reserved"}, volmap.ErrInvalidName},
	{[]string{"name", "is invalid"}, volmap.ErrInvalidName},
	{[]string{"invalid argument for --addtag"}, volmap.ErrInvalidName},
	{[]string{"invalid argument for --deltag"}, volmap.ErrInvalidName},
	{[]string{"not found"}, volmap.ErrNotFound},
	{[]string{"failed to find"}, volmap.ErrNotFound},
}

// classify maps an lvm2 stderr to a volmap sentinel, or nil.
func classify(stderr string) error {
	var lines []string
	for l := range strings.SplitSeq(strings.ToLower(stderr), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "", strings.HasPrefix(l, "warning:"):
		case strings.Contains(l, "device not cleared"):
			// "/dev/vg/lv: not found: device not cleared": the udev
			// setup is broken; it is not a missing volume.
		default:
			lines = append(lines, l)
		}
	}
	for _, p := range patterns {
		for _, l := range lines {
			if containsAll(l, p.all) {
				return p.err
			}
		}
	}
	return nil
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// summarize returns the error lines of stderr on one line (warnings only if
// there is nothing else).
func summarize(stderr string) string {
	var errs, warns []string
	for l := range strings.SplitSeq(stderr, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "Run `"):
		case strings.HasPrefix(l, "WARNING:"):
			warns = append(warns, l)
		default:
			errs = append(errs, l)
		}
	}
	if len(errs) == 0 {
		errs = warns
	}
	return strings.Join(errs, "; ")
}

// shellJoin renders a command line for messages, quoting what needs it and
// eliding the middle of very long lines (tag lists).
func shellJoin(args []string, max int) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}()<>|&;!#~") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	s := strings.Join(q, " ")
	if max > 0 && len(s) > max {
		s = s[:max*2/3] + " ... " + s[len(s)-max/3:]
	}
	return s
}

func (r *Runner) binary() string {
	if r.Path == "" {
		return "lvm"
	}
	return r.Path
}

func (r *Runner) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// Run runs "lvm <command> --yes --config ... args..." and returns its
// stdout. Failures are *CmdError. Commands that could not get an LVM lock
// are retried a few times.
func (r *Runner) Run(ctx context.Context, command string, args ...string) ([]byte, error) {
	return r.run(ctx, "", command, args...)
}

// unarchived is the configuration of a change that only sets tags: lvm
// keeps no copy of the VG's metadata from before it in its archive
// directory (the backup of the current metadata is still written). volfs
// changes tags at every close that wrote and every 5 s while a file grows;
// each archived copy is the whole VG's metadata (hundreds of KiB with a
// thousand LVs), kept 30 days. Changes of LVs themselves stay archived.
const unarchived = "backup/archive=0"

// RunTags is Run for an lvchange that only adds and deletes tags (see
// unarchived).
func (r *Runner) RunTags(ctx context.Context, args ...string) ([]byte, error) {
	return r.run(ctx, unarchived, "lvchange", args...)
}

func (r *Runner) run(ctx context.Context, extra, command string, args ...string) ([]byte, error) {
	cfg := lockConfig
	if r.Config != "" {
		cfg += " " + r.Config
	}
	if extra != "" {
		cfg += " " + extra
	}
	argv := []string{command, "--yes", "--config", cfg}
	if devs := r.devices.Load(); devs != nil {
		argv = append(argv, "--devices", *devs)
	}
	argv = append(argv, args...)
	for attempt := 0; ; attempt++ {
		out, err := r.exec(ctx, argv)
		var ce *CmdError
		if err == nil || !errors.As(err, &ce) || !ce.lockFailure() || ctx.Err() != nil || attempt >= len(lockRetries) {
			return out, err
		}
		r.log().Info("lvm: VG lock busy, retrying", slog.String("cmd", command),
			slog.Int("attempt", attempt+1), slog.String("stderr", summarize(ce.Stderr)))
		select {
		case <-time.After(lockRetries[attempt]):
		case <-ctx.Done():
			return out, err
		}
	}
}

// Report runs a reporting command (lvs, vgs, pvs) with JSON output in
// bytes and returns the JSON.
func (r *Runner) Report(ctx context.Context, command string, fields string, args ...string) ([]byte, error) {
	a := append([]string{"--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields}, args...)
	return r.Run(ctx, command, a...)
}

// exec runs lvm with exactly argv (after the binary).
func (r *Runner) exec(ctx context.Context, argv []string) ([]byte, error) {
	return r.execBinary(ctx, r.binary(), argv[0], argv)
}

// Tool runs another device-mapper tool (dmsetup, thin_dump) from $PATH
// the way lvm commands run: LC_ALL=C, interrupted when ctx ends, logged
// and observed under name, failures as *CmdError keeping stderr.
func (r *Runner) Tool(ctx context.Context, bin string, args ...string) ([]byte, error) {
	return r.execBinary(ctx, bin, bin, args)
}

func (r *Runner) execBinary(ctx context.Context, bin, name string, argv []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bin, argv...)
	// LC_ALL=C: messages are matched in English. LVM_SUPPRESS_FD_WARNINGS:
	// no "File descriptor N leaked" noise if a caller's fd lacks CLOEXEC.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = r.CancelGrace
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 30 * time.Second
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	observe(name, took, err != nil)
	code := -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	msg := "lvm"
	if name == bin {
		msg = bin // Tool
	}
	r.log().Debug(msg, slog.String("cmd", shellJoin(argv, 400)), slog.Duration("took", took),
		slog.Int("exit", code))
	if err == nil {
		return stdout.Bytes(), nil
	}
	ce := &CmdError{Args: append([]string{bin}, argv...), ExitCode: code, Stderr: stderr.String(), Err: err}
	if ctx.Err() != nil {
		ce.Ctx = ctx.Err()
	}
	return stdout.Bytes(), ce
}

// devicesFileInUse reports whether lvm limits its scans to the devices of
// a devices file (devices/use_devicesfile=1, with the runner's --config,
// and /etc/lvm/devices/system.devices present): an explicit --devices
// list would override it and let lvm see devices the administrator left
// out.
func (r *Runner) devicesFileInUse(ctx context.Context) bool {
	if _, err := os.Stat("/etc/lvm/devices/system.devices"); err != nil {
		return false
	}
	args := []string{"lvmconfig", "--typeconfig", "full"}
	if r.Config != "" {
		args = append(args, "--config", r.Config)
	}
	cmd := exec.CommandContext(ctx, r.binary(), append(args, "devices/use_devicesfile")...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	out, err := cmd.Output()
	return err == nil && strings.TrimSpace(string(out)) == "use_devicesfile=1"
}

// help returns the output of "lvm <command> --help" (which lvm2 writes to
// stderr or stdout depending on the version), run once per command: it
// only tells which options this lvm has, and the mount asks more than once
// (a process of lvm costs 0.1-0.3 s in the test guest).
func (r *Runner) help(ctx context.Context, command string) (string, error) {
	r.helpMu.Lock()
	defer r.helpMu.Unlock()
	if out, ok := r.helps[command]; ok {
		return out, nil
	}
	cmd := exec.CommandContext(ctx, r.binary(), command, "--help")
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	out, err := cmd.CombinedOutput()
	if err != nil && len(out) == 0 {
		return "", fmt.Errorf("%s %s --help: %w", r.binary(), command, err)
	}
	if err == nil || (ctx.Err() == nil && strings.Contains(string(out), "--")) {
		// Kept when lvm ended on its own with its option list (some
		// versions exit non-zero after --help).
		if r.helps == nil {
			r.helps = make(map[string]string)
		}
		r.helps[command] = string(out)
	}
	return string(out), nil
}
