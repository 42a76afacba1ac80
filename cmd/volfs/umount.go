package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/volfs/volfs/internal/mountinfo"
)

func newUmountCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:     "umount MOUNTPOINT",
		Aliases: []string{"unmount"},
		Short:   "Unmount a volfs mount and stop its server",
		Long: `Unmount MOUNTPOINT and wait until its server has written out what it kept in
memory (modification times, file sizes) and exited. A mount in use is left
alone: the error names the processes that hold it.`,
		Example: "  volfs umount /var/lib/images",
		Args:    exactArgs(1, "exactly one MOUNTPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return umount(args[0], timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the server to exit")
	return cmd
}

func umount(mountpoint string, timeout time.Duration) error {
	mnt, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(mnt); err == nil {
		mnt = real
	}
	if ok, fstype := mountinfo.MountPoint(mnt); !ok {
		return fmt.Errorf("%s is not mounted", mnt)
	} else if !strings.HasPrefix(fstype, "fuse") {
		return fmt.Errorf("%s is a %s mount, not volfs", mnt, fstype)
	}
	pid := readPid(pidPath(mnt))
	if err := syscall.Unmount(mnt, 0); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			if h := holders(mnt); h != "" {
				return fmt.Errorf("%s is busy, in use by %s: close those first", mnt, h)
			}
			return fmt.Errorf("%s is busy: a process has a file or directory open in it", mnt)
		}
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	if pid <= 0 {
		return nil
	}
	prog := newWaitProgress(os.Stderr, fmt.Sprintf("waiting for the server (pid %d) to write out attributes and exit", pid), timeout)
	defer prog.done()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if exited(pid) {
			return nil
		}
		prog.tick()
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("unmounted %s, but its server (pid %d) has not exited after %s", mnt, pid, timeout)
}

// pidPath is where the server of a mount records its pid.
func pidPath(mnt string) string {
	h := sha256.Sum256([]byte(mnt))
	return filepath.Join("/run/volfs", hex.EncodeToString(h[:8])+".pid")
}

func readPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// exited reports whether a process is gone or a zombie (the server was
// started in the background; whoever inherited it reaps it when it can).
func exited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// holders lists the processes with a file, directory or cwd under dir.
func holders(dir string) string {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var out []string
	for _, p := range procs {
		links, _ := filepath.Glob(p + "/fd/*")
		links = append(links, p+"/cwd", p+"/root")
		for _, l := range links {
			t, err := os.Readlink(l)
			if err == nil && (t == dir || strings.HasPrefix(t, dir+"/")) {
				comm, _ := os.ReadFile(p + "/comm")
				out = append(out, fmt.Sprintf("%s (pid %s)", strings.TrimSpace(string(comm)), filepath.Base(p)))
				break
			}
		}
	}
	return strings.Join(out, ", ")
}
