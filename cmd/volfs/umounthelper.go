package main

import (
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// umountHelperName is what umount(8) runs, if it exists, to unmount a
// mount of type fuse.volfs: make install links it to the volfs binary, so
// that `umount DIR` (and systemd stopping an fstab mount) waits like
// `volfs umount DIR` until the server has written out what it kept in
// memory and exited, and a busy mount's error names who holds it.
const umountHelperName = "umount.fuse.volfs"

func isUmountHelper(argv0 string) bool {
	b := filepath.Base(argv0)
	return b == umountHelperName || b == "umount.volfs"
}

type umountHelper struct {
	lazy, force, readOnly, noMtab, verbose bool
	namespace, fstype                      string
}

func newUmountHelperCmd() *cobra.Command {
	h := &umountHelper{}
	cmd := &cobra.Command{
		Use:   umountHelperName + " MOUNTPOINT [-flnrv]",
		Short: "Unmount volfs with umount(8)",
		Long: `umount(8) runs this helper for mounts of type fuse.volfs. It unmounts as
'volfs umount' does: it waits until the server has written out what it kept
in memory (modification times, sizes) and exited, and a busy mount is left
alone with an error naming the processes that hold it. With -l (lazy) the
mount is detached at once and its server exits when the last file closes;
-f forces the unmount (requests in flight fail).`,
		Example:           "  umount /var/lib/images",
		Args:              exactArgs(1, "exactly one MOUNTPOINT"),
		SilenceUsage:      true,
		SilenceErrors:     true,
		DisableAutoGenTag: true,
		RunE:              func(cmd *cobra.Command, args []string) error { return h.run(args[0]) },
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see %s --help)", err, umountHelperName)}
	})
	f := cmd.Flags()
	f.BoolVarP(&h.lazy, "lazy", "l", false, "detach now, clean up when no longer busy")
	f.BoolVarP(&h.force, "force", "f", false, "force the unmount")
	f.BoolVarP(&h.readOnly, "read-only", "r", false, "accepted; a volfs mount cannot be remounted read-only")
	f.BoolVarP(&h.noMtab, "no-mtab", "n", false, "accepted; there is no /etc/mtab to write")
	f.BoolVarP(&h.verbose, "verbose", "v", false, "accepted")
	f.StringVarP(&h.namespace, "namespace", "N", "", "not supported: run umount in the namespace")
	f.StringVarP(&h.fstype, "types", "t", "", "the file system type, fuse.volfs")
	return cmd
}

func (h *umountHelper) run(dir string) error {
	if h.namespace != "" {
		return usagef("-N (unmount in another namespace) is not supported: run umount inside the namespace")
	}
	switch {
	case h.lazy:
		return unmountFlags(dir, syscall.MNT_DETACH)
	case h.force:
		return unmountFlags(dir, syscall.MNT_FORCE)
	}
	return (&umountCmd{timeout: time.Minute}).run(dir)
}

func unmountFlags(dir string, flags int) error {
	if err := syscall.Unmount(dir, flags); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}
