package main

import (
	"fmt"
	"io"
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

// firstEntry returns the name of an entry of dir, "" if it is empty. A
// mount hides what the directory holds (the files stay, out of sight,
// until unmount); mount(8) does not say so, volfs does: on the command's
// stderr and in the server's log.
func firstEntry(dir string) string {
	d, err := os.Open(dir)
	if err != nil {
		return ""
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if err != nil && err != io.EOF || len(names) == 0 {
		return ""
	}
	return names[0]
}

func warnHidden(mnt, first string) {
	if first != "" {
		fmt.Fprintf(os.Stderr, "volfs: warning: %s is not empty (%s, ...): its files are hidden while mounted\n", mnt, first)
	}
}
