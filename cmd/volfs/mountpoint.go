package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/volfs/volfs/internal/mountinfo"
)

// notMounted refuses a mount point that already is one, from
// /proc/self/mountinfo alone.
func notMounted(dir string) error {
	m, ok := mountinfo.Find(dir)
	switch {
	case !ok:
		return nil
	case strings.HasPrefix(m.FSType, "fuse"):
		return fmt.Errorf("%s is already a mount point (%s): unmount it first with 'volfs umount %s' (add --force if its server is dead or hung)", dir, m.FSType, dir)
	}
	return fmt.Errorf("%s is already a mount point (%s): unmount it first", dir, m.FSType)
}

// warnIfNotEmpty says that a mount hides what the directory holds, as
// mount(8) would not: the files are still there, out of sight, until
// unmount. The command's stderr tells the user; the server's log keeps it.
func (c *mountCmd) warnIfNotEmpty(mnt string) {
	d, err := os.Open(mnt)
	if err != nil {
		return
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if err != nil && err != io.EOF || len(names) == 0 {
		return
	}
	if c.foreground {
		c.logger().Warn("mount point is not empty: its files are hidden while mounted",
			slog.String("mount", mnt), slog.String("first", names[0]))
		return
	}
	fmt.Fprintf(os.Stderr, "volfs: warning: %s is not empty (%s, ...): its files are hidden while mounted\n", mnt, names[0])
}
