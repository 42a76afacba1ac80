package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	volfs "github.com/volfs/volfs/fs"
	"github.com/volfs/volfs/internal/control"
	"github.com/volfs/volfs/internal/mountinfo"
)

// inspection is what a server runs besides the mount for volfs ls, volfs
// status and metrics.
type inspection struct {
	ctl     *control.Server
	metrics func()
}

// startInspection serves the mount's control socket (ls, status,
// snapshots, clones) and, with --metrics, its Prometheus endpoint. A control socket that cannot be made is logged
// (the mount still serves files); metrics that cannot listen are an error,
// since they were asked for.
func (c *mountCmd) startInspection(mnt string, root *volfs.Root, log *slog.Logger) (*inspection, error) {
	insp := volfs.NewInspector(root, volfs.ServerInfo{Mount: mnt, Source: c.source(), Version: versionString()})
	in := &inspection{}
	if c.metrics != "" {
		stop, err := startMetrics(c.metrics, insp, log)
		if err != nil {
			return nil, err
		}
		in.metrics = stop
	}
	ctl, err := control.Listen(control.SocketPath(mnt), log)
	if err != nil {
		log.Warn("no control socket: volfs ls and volfs status will not reach this server", slog.Any("err", err))
		return in, nil
	}
	insp.Register(ctl)
	registerSnapshotOps(ctl, root, mnt)
	go ctl.Serve()
	in.ctl = ctl
	return in, nil
}

func (in *inspection) close() {
	if in.ctl != nil {
		in.ctl.Close()
	}
	if in.metrics != nil {
		in.metrics()
	}
}

// resolveMount turns a mount point argument into the path the server
// knows, and checks it is a FUSE mount.
func resolveMount(arg string) (string, error) {
	mnt, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(mnt); err == nil {
		mnt = real
	}
	ok, fstype := mountinfo.MountPoint(mnt)
	switch {
	case !ok:
		return "", fmt.Errorf("%s is not mounted", mnt)
	case !strings.HasPrefix(fstype, "fuse"):
		return "", fmt.Errorf("%s is a %s mount, not volfs", mnt, fstype)
	}
	return mnt, nil
}

// needRoot refuses a command that only root can do, up front, rather than
// with the bare errno of the first step that fails.
func needRoot(cmd, why string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("volfs %s must run as root: %s", cmd, why)
	}
	return nil
}

// callServer asks the server of mnt for op, explaining the usual failures.
func callServer(ctx context.Context, mnt, op string, result any) error {
	err := control.Call(ctx, mnt, op, nil, result, nil)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, control.ErrNoServer):
		return fmt.Errorf("%w (a volfs server started before volfs %s has no control socket; remount to use %s)",
			err, op, op)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("the server of %s did not answer in time: %w", mnt, err)
	}
	return err
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
