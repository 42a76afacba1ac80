package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/volfs/volfs/internal/control"
	"github.com/volfs/volfs/snapshot"
)

func newCloneCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "clone MOUNT/SRC MOUNT/DST",
		Short: "Make a new image from an image or a snapshot (instant when thin, else a copy)",
		Long: `Make DST a new, independent, writable image with the data of SRC, an image or a
snapshot (MOUNT/.snapshots/IMAGE/NAME). On a thin pool it is instant: a writable
thin snapshot that shares the pool's blocks until either side writes them. DST
gets its own identity (inode number) and SRC's mode, owner and size; its times
are now. SRC may be in use (a running VM's disk): the clone is crash-consistent.

An image that is not thin (a linear LV) is copied instead, inside the server,
with a progress line on a terminal: DST is a new volume (thin if the mount has
--thin-pool, and then all-zero blocks are not written and take no pool space).
The copy appears as MOUNT/.volfs-clone-XXXXXXXXXXXXXXXX until it is complete and
then takes the name DST; a failed or interrupted copy (Ctrl-C) is removed. Stop
what writes SRC first: a copy made while SRC is written is not consistent.`,
		Example: "  volfs clone /var/lib/images/template /var/lib/images/web2\n" +
			"  volfs clone /var/lib/images/.snapshots/web/before-upgrade /var/lib/images/web-old",
		Args: exactArgs(2, "MOUNT/SRC and MOUNT/DST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := resolve(args[0])
			if err != nil {
				return err
			}
			dst, err := imageTarget(args[1])
			if err != nil {
				return err
			}
			if src.Mount != dst.Mount {
				return usagef("%s and %s are in different mounts; clone works inside one mount (use cp between mounts)", args[0], args[1])
			}
			// No deadline: a copy takes as long as the image's size needs.
			// Ctrl-C closes the connection and the server removes the
			// partial copy.
			prog := newCopyProgress(os.Stderr, "copying "+args[0])
			defer prog.done()
			err = control.Call(context.Background(), src.Mount, snapshot.OpClone,
				snapshot.Args{Image: src.Image, Name: src.Snap, Dst: dst.Image}, nil, prog.update)
			if errors.Is(err, control.ErrNoServer) {
				return fmt.Errorf("%s is not a running volfs mount (%w)", src.Mount, err)
			}
			return err
		},
	}
}
