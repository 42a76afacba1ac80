package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/fusectl"
	"github.com/volfs/volfs/internal/mountinfo"
	"github.com/volfs/volfs/internal/proc"
	"github.com/volfs/volfs/internal/procfs"
)

type umountCmd struct {
	timeout time.Duration
	force   bool
}

func newUmountCmd() *cobra.Command {
	c := &umountCmd{}
	cmd := &cobra.Command{
		Use:     "umount MOUNTPOINT",
		Aliases: []string{"unmount"},
		Short:   "Unmount a volfs mount and stop its server",
		Long: `Unmount MOUNTPOINT and wait until its server has written out what it kept in
memory (modification times, file sizes) and exited. A mount in use is left
alone: the error names the processes that hold it. Everything is bounded by
--timeout: a server that does not answer gives an error, never a hang.

--force is for a server that is wedged, stopped or dead: it aborts the FUSE
connection (processes using the mount get ENOTCONN, unwritten modification
times are lost; data written before is on the device), unmounts (lazily if
the mount is in use), and kills the server, so the mount point is a plain
directory again.`,
		Example: `  volfs umount /var/lib/images
  volfs umount --force /var/lib/images`,
		Args: exactArgs(1, "exactly one MOUNTPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error { return c.run(args[0]) },
	}
	cmd.Flags().DurationVar(&c.timeout, "timeout", time.Minute, "how long to wait for the unmount and for the server to exit")
	cmd.Flags().BoolVar(&c.force, "force", false, "abort the FUSE connection, detach the mount and kill its server")
	return cmd
}

// errTimeout: a step did not finish within --timeout.
var errTimeout = errors.New("timed out")

// within runs f, giving up at the deadline (f keeps running in its
// goroutine; a syscall stuck on a wedged FUSE server cannot be cancelled,
// and the process exits soon after).
func within(deadline time.Time, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errTimeout
	}
}

// find locates the mount at mountpoint from /proc/self/mountinfo alone.
// Only when the literal path is not a mount point is it resolved (it may
// hold symlinks), and that resolution, which stats paths, is bounded too.
func (c *umountCmd) find(mountpoint string, deadline time.Time) (string, mountinfo.Mount, bool, error) {
	mnt, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", mountinfo.Mount{}, false, err
	}
	if m, ok := mountinfo.Find(mnt); ok {
		return mnt, m, true, nil
	}
	var real string
	if err := within(deadline, func() (err error) { real, err = filepath.EvalSymlinks(mnt); return err }); err == nil {
		mnt = real
	} else if errors.Is(err, errTimeout) {
		return "", mountinfo.Mount{}, false, fmt.Errorf("%s: resolving the path did not finish within %s: a mount on the way does not answer; give the mount point as it appears in /proc/self/mountinfo", mnt, c.timeout)
	}
	m, ok := mountinfo.Find(mnt)
	return mnt, m, ok, nil
}

func (c *umountCmd) run(mountpoint string) error {
	if err := needRoot("umount", "it unmounts and stops the server"); err != nil {
		return err
	}
	deadline := time.Now().Add(c.timeout)
	mnt, m, mounted, err := c.find(mountpoint, deadline)
	if err != nil {
		return err
	}
	srv, running := mountServer(mnt)
	switch {
	case !mounted && c.force && running:
		// Unmounted already, but its server lives on (stopped, wedged).
		return c.kill(mnt, srv, deadline)
	case !mounted:
		return fmt.Errorf("%s is not mounted", mnt)
	case m.FSType != "fuse.volfs" && m.Source != "volfs":
		return fmt.Errorf("%s is a %s mount (%s), not volfs: use umount(8)", mnt, m.FSType, m.Source)
	case c.force:
		return c.forceUmount(mnt, m, srv, running, deadline)
	}
	switch err := within(deadline, func() error { return unix.Unmount(mnt, 0) }); {
	case errors.Is(err, errTimeout):
		return fmt.Errorf("unmounting %s did not finish within %s: its server%s does not answer; 'volfs umount --force %s' aborts its connection and detaches it",
			mnt, c.timeout, pidNote(srv, running), mnt)
	case errors.Is(err, syscall.EBUSY):
		if h := holdersWithin(mnt, deadline); h != "" {
			return fmt.Errorf("%s is busy, in use by %s: close those first (or detach it anyway with 'volfs umount --force %s')", mnt, h, mnt)
		}
		return fmt.Errorf("%s is busy: a process has a file or directory open in it (or detach it anyway with 'volfs umount --force %s')", mnt, mnt)
	case err != nil:
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	if !running {
		return nil
	}
	prog := newWaitProgress(os.Stderr, fmt.Sprintf("waiting for the server (pid %d) to write out attributes and exit", srv.Pid), c.timeout)
	defer prog.done()
	for srv.Running() {
		if time.Now().After(deadline) {
			return fmt.Errorf("unmounted %s, but its server (pid %d) has not exited after %s (stopped or wedged?): 'volfs umount --force %s' kills it",
				mnt, srv.Pid, c.timeout, mnt)
		}
		prog.tick()
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func pidNote(srv proc.ID, running bool) string {
	if !running {
		return ""
	}
	return fmt.Sprintf(" (pid %d)", srv.Pid)
}

// forceUmount is what `umount -f` does for a FUSE mount, and more: abort
// the connection through fusectl (every waiting request fails with
// ENOTCONN, the server's reads of /dev/fuse fail), unmount, lazily when the
// mount is in use, then make sure the server is gone.
func (c *umountCmd) forceUmount(mnt string, m mountinfo.Mount, srv proc.ID, running bool, deadline time.Time) error {
	abortErr := within(deadline, func() error { return fusectl.Abort(m, true) })
	err := within(deadline, func() error { return unix.Unmount(mnt, unix.MNT_FORCE) })
	var busy string
	if errors.Is(err, syscall.EBUSY) {
		busy = holdersWithin(mnt, deadline)
		err = within(deadline, func() error { return unix.Unmount(mnt, unix.MNT_DETACH) })
	}
	if err != nil && !errors.Is(err, syscall.EINVAL) { // EINVAL: not mounted any more
		return fmt.Errorf("force unmount %s: %w (aborting its FUSE connection: %v)", mnt, err, abortErr)
	}
	if running {
		if err := c.kill(mnt, srv, deadline); err != nil {
			return err
		}
	}
	if abortErr != nil {
		fmt.Fprintf(os.Stderr, "volfs: warning: could not abort the FUSE connection of %s (%v); unmounted with MNT_FORCE\n", mnt, abortErr)
	}
	if busy != "" {
		fmt.Fprintf(os.Stderr, "volfs: %s was in use by %s: detached; they get ENOTCONN\n", mnt, busy)
	}
	return nil
}

// kill stops a server that outlived its mount's connection: it is woken
// (it may be stopped) and given until the deadline to exit by itself, then
// killed.
func (c *umountCmd) kill(mnt string, srv proc.ID, deadline time.Time) error {
	p, err := os.FindProcess(srv.Pid)
	if err != nil {
		return err
	}
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(syscall.SIGTERM)
	killAt := time.Now().Add(time.Until(deadline) / 2)
	killed := false
	for srv.Running() {
		if !killed && time.Now().After(killAt) {
			_ = p.Signal(syscall.SIGKILL)
			killed = true
		}
		if time.Now().After(deadline.Add(5 * time.Second)) {
			return fmt.Errorf("the server of %s (pid %d) does not die even from SIGKILL (stuck in the kernel?)", mnt, srv.Pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	os.Remove(pidPath(mnt))
	return nil
}

// holdersWithin lists the processes with a file, directory, cwd or root
// under dir, given up at the deadline: reading /proc/PID of a process in
// the middle of exec waits until it is done, and an exec that closes a
// file of a wedged mount waits for the server.
func holdersWithin(dir string, deadline time.Time) string {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	procs, complete := procfs.Users(ctx, dir)
	var out []string
	for _, p := range procs {
		out = append(out, fmt.Sprintf("%s (pid %d)", p.Command, p.PID))
	}
	if !complete {
		out = append(out, "processes that could not be listed in time")
	}
	return strings.Join(out, ", ")
}
