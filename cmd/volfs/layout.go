package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	volfs "github.com/volfs/volfs/fs"
	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// layoutCmd is a front end to meta.LayoutXattr (get and set), plus the
// health and sync state that `volfs ls` has.
type layoutCmd struct {
	wait    bool
	timeout time.Duration
}

func newLayoutCmd() *cobra.Command {
	c := &layoutCmd{}
	cmd := &cobra.Command{
		Use:   "layout MOUNT/IMAGE [LAYOUT [mirrors=N] [stripes=N]]",
		Short: "Show an image's layout (linear, striped, RAID) and health, or change it online",
		Long: `With one argument, print the image's layout (as the trusted.volfs.layout
attribute gives it: "linear", "striped stripes=2", "raid1 mirrors=1", ...),
its health, and how far its RAID copies are in sync.

With a LAYOUT, change it: on a file created and not written yet this decides
how its volume is made; on an existing image volfs converts the volume online
(lvconvert) while it stays in use. Then, on a terminal, a progress line follows
the RAID copies' sync until they are complete (--wait=false returns at once;
Ctrl-C stops watching, not the sync). Refused requests (no PV with room for a
new copy, a conversion LVM makes only in several steps such as linear to
striped, a layout on a thin mount, an unknown type) change nothing; the
server's log says why.
Needs root, as every trusted.* attribute.`,
		Example: "  volfs layout /var/lib/images/web\n" +
			"  volfs layout /var/lib/images/web raid1 mirrors=1\n" +
			"  volfs layout /var/lib/images/scratch striped stripes=2",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return usagef("give MOUNT/IMAGE, and a LAYOUT to change it")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := needRoot("layout", "the layout is the trusted.volfs.layout attribute"); err != nil {
				return err
			}
			t, err := imageTarget(args[0])
			if err != nil {
				return err
			}
			if len(args) == 1 {
				return c.show(cmd.OutOrStdout(), t.Mount, t.Image, args[0])
			}
			return c.set(cmd.ErrOrStderr(), t.Mount, t.Image, args[0], strings.Join(args[1:], " "))
		},
	}
	cmd.Flags().BoolVar(&c.wait, "wait", true, "after a change, follow the RAID sync to its end on a terminal")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 30*time.Second, "how long to wait for each answer of the server")
	return cmd
}

func getLayout(path string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, meta.LayoutXattr, buf)
	if err != nil {
		return "", layoutErr("read the layout of", path, "", err)
	}
	return string(buf[:n]), nil
}

func layoutErr(what, path, value string, err error) error {
	switch {
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%s %s: needs root (%s is a trusted.* attribute): %w", what, path, meta.LayoutXattr, err)
	case errors.Is(err, syscall.ENODATA), errors.Is(err, syscall.ENOTSUP):
		return fmt.Errorf("%s %s: not a volfs image with layouts (an LVM mount): %w", what, path, err)
	case errors.Is(err, syscall.EINVAL) && value != "":
		return fmt.Errorf("%s %s: layout %q refused (unknown type, no PV with room for a new copy, a "+
			"conversion LVM does not make in one step, a thin mount, or LVM's own refusal; the server's log says which): %w", what, path, value, err)
	}
	return fmt.Errorf("%s %s: %w", what, path, err)
}

// entry is the image's line of `volfs ls`.
func (c *layoutCmd) entry(mnt, image string) (volfs.FileInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var l volfs.Listing
	if err := callServer(ctx, mnt, volfs.OpLs, &l); err != nil {
		return volfs.FileInfo{}, err
	}
	for _, f := range l.Files {
		if f.Name == image {
			return f, nil
		}
	}
	return volfs.FileInfo{}, fmt.Errorf("%s: no image %q in the mount's listing", mnt, image)
}

func (c *layoutCmd) show(w io.Writer, mnt, image, path string) error {
	layout, err := getLayout(path)
	if err != nil {
		return err
	}
	f, err := c.entry(mnt, image)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "layout: %s\n", layout)
	if f.Pending {
		fmt.Fprintln(w, "volume: not made yet (at the first write or close); it will have this layout")
		return nil
	}
	fmt.Fprintf(w, "health: %s\n", orDash(f.Health))
	if f.SyncPercent != nil {
		fmt.Fprintf(w, "in sync: %.1f%%\n", *f.SyncPercent)
	}
	return nil
}

func (c *layoutCmd) set(w io.Writer, mnt, image, path, value string) error {
	if _, err := volmap.ParseLayout(value); err != nil {
		return usageError{err}
	}
	if err := unix.Setxattr(path, meta.LayoutXattr, []byte(value), 0); err != nil {
		return layoutErr("change the layout of", path, value, err)
	}
	if tty, ok := w.(*os.File); !c.wait || !ok || !isTerminal(tty) {
		return nil
	}
	for {
		f, err := c.entry(mnt, image)
		if err != nil {
			return err
		}
		if f.SyncPercent == nil || *f.SyncPercent >= 100 {
			fmt.Fprintf(w, "\r\033[K%s: %s, %s\n", path, value, orDash(f.Health))
			return nil
		}
		fmt.Fprintf(w, "\r\033[K%s: %s, copies in sync %.1f%%", path, value, *f.SyncPercent)
		time.Sleep(time.Second)
	}
}
