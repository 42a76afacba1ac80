package main

import (
	"github.com/spf13/cobra"

	"github.com/volfs/volfs/snapshot"
)

func newCloneCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "clone MOUNT/SRC MOUNT/DST",
		Short: "Make a new image from an image or a snapshot, instantly",
		Long: `Make DST a new, independent, writable image with the data of SRC, an image or a
snapshot (MOUNT/.snapshots/IMAGE/NAME). On a thin pool it is instant: a writable
thin snapshot that shares the pool's blocks until either side writes them. DST
gets its own identity (inode number) and SRC's mode, owner and size; its times
are now. SRC must be a thin volume (volfs mount --thin-pool); for other images
use cp. SRC may be in use (a running VM's disk): the clone is crash-consistent.`,
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
			return callSnapshot(src.Mount, snapshot.OpClone, snapshot.Args{Image: src.Image, Name: src.Snap, Dst: dst.Image}, nil)
		},
	}
}
