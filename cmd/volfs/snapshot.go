package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	volfs "github.com/volfs/volfs/fs"
	"github.com/volfs/volfs/internal/control"
	"github.com/volfs/volfs/snapshot"
	"github.com/volfs/volfs/volmap"
)

// snapshotTimeout bounds a snapshot command (the server bounds its lvm
// commands itself).
const snapshotTimeout = 5 * time.Minute

func newSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Create, list, delete and roll back snapshots of images",
		Long: `Snapshots are read-only, instant copies of an image, taken by the mount's server
(which first flushes what it holds of the image: the snapshot of a running VM's
disk is crash-consistent). They are thin snapshots: the image must be a thin
volume (volfs mount --thin-pool). Each one is also a read-only file,
MOUNT/.snapshots/IMAGE/NAME, which cp, qemu-img and backups can read; rm and mv
there delete and rename snapshots. A snapshot follows its image through mv, and
an image that has snapshots cannot be removed.`,
		Args: unknownCommand,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	var jsonOut bool
	list := &cobra.Command{
		Use:     "list MOUNT/IMAGE",
		Aliases: []string{"ls"},
		Short:   "List the snapshots of an image",
		Example: "  volfs snapshot list /var/lib/images/web\n  volfs snapshot list --json /var/lib/images/web",
		Args:    exactArgs(1, "MOUNT/IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := imageTarget(args[0])
			if err != nil {
				return err
			}
			var infos []snapshot.Info
			if err := callSnapshot(t.Mount, snapshot.OpList, snapshot.Args{Image: t.Image}, &infos); err != nil {
				return err
			}
			if jsonOut {
				if infos == nil {
					infos = []snapshot.Info{}
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(infos)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tCREATED\tSIZE\tUSED\tLV")
			for _, i := range infos {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", i.Name, i.Created.Local().Format("2006-01-02 15:04:05"),
					humanBytes(i.Size), humanBytes(i.Used), i.Device)
			}
			return w.Flush()
		},
	}
	list.Flags().BoolVar(&jsonOut, "json", false, "print JSON (name, image, created, size, used, device, path)")
	cmd.AddCommand(
		&cobra.Command{
			Use:     "create MOUNT/IMAGE NAME",
			Short:   "Take a snapshot of an image",
			Example: "  volfs snapshot create /var/lib/images/web before-upgrade",
			Args:    exactArgs(2, "MOUNT/IMAGE and a snapshot NAME"),
			RunE:    snapshotOp(snapshot.OpCreate),
		},
		list,
		&cobra.Command{
			Use:     "delete MOUNT/IMAGE NAME",
			Aliases: []string{"rm"},
			Short:   "Delete a snapshot",
			Example: "  volfs snapshot delete /var/lib/images/web before-upgrade",
			Args:    exactArgs(2, "MOUNT/IMAGE and a snapshot NAME"),
			RunE:    snapshotOp(snapshot.OpDelete),
		},
		&cobra.Command{
			Use:   "rollback MOUNT/IMAGE NAME",
			Short: "Give an image the data of one of its snapshots",
			Long: `Replace the image's data with the snapshot's. The image keeps its inode number,
mode, owner and extended attributes; its size becomes the snapshot's. Its other
snapshots are kept (newer ones too). Refused while the image is open, through
the mount or elsewhere (stop the VM first).`,
			Example: "  volfs snapshot rollback /var/lib/images/web before-upgrade",
			Args:    exactArgs(2, "MOUNT/IMAGE and a snapshot NAME"),
			RunE:    snapshotOp(snapshot.OpRollback),
		},
	)
	return cmd
}

func snapshotOp(op string) func(cmd *cobra.Command, args []string) error {
	return func(cmd *cobra.Command, args []string) error {
		t, err := imageTarget(args[0])
		if err != nil {
			return err
		}
		return callSnapshot(t.Mount, op, snapshot.Args{Image: t.Image, Name: args[1]}, nil)
	}
}

// resolve makes path absolute with the mount point's symlinks resolved
// (the control socket is named after the real path).
func resolve(path string) (snapshot.Target, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return snapshot.Target{}, err
	}
	t, err := snapshot.ParsePath(abs)
	if err != nil {
		return t, usageError{err}
	}
	if real, err := filepath.EvalSymlinks(t.Mount); err == nil {
		t.Mount = real
	}
	return t, nil
}

func imageTarget(path string) (snapshot.Target, error) {
	t, err := resolve(path)
	if err == nil && t.Snap != "" {
		err = usagef("%s is a snapshot; give the image: MOUNT/IMAGE", path)
	}
	return t, err
}

// callSnapshot asks the server of mnt for a snapshot or clone operation.
func callSnapshot(mnt, op string, args snapshot.Args, result any) error {
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	err := control.Call(ctx, mnt, op, args, result, nil)
	if errors.Is(err, control.ErrNoServer) {
		return fmt.Errorf("%s is not a running volfs mount (%w)", mnt, err)
	}
	return err
}

// humanBytes prints a size as ls and status do; "-" when unknown.
func humanBytes(n int64) string {
	if n < 0 {
		return "-"
	}
	return humanize.IBytes(uint64(n))
}

// registerSnapshotOps serves the snapshot and clone commands.
func registerSnapshotOps(s *control.Server, root *volfs.Root, mnt string) {
	info := func(image string, sn volmap.Snapshot) snapshot.Info {
		size := sn.Size
		if sn.Attrs.Size >= 0 && sn.Attrs.Size <= sn.Size {
			size = sn.Attrs.Size
		}
		return snapshot.Info{Name: sn.Name, Image: image, Created: sn.Created, Size: size, Used: sn.Used,
			Device: sn.Device, Path: filepath.Join(mnt, snapshot.Dir, image, sn.Name)}
	}
	decode := func(raw json.RawMessage) (snapshot.Args, error) {
		var a snapshot.Args
		if err := json.Unmarshal(raw, &a); err != nil || a.Image == "" {
			return a, fmt.Errorf("bad arguments %s: %v", raw, err)
		}
		return a, nil
	}
	s.Handle(snapshot.OpCreate, func(ctx context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
		a, err := decode(raw)
		if err != nil {
			return nil, err
		}
		sn, err := root.CreateSnapshot(ctx, a.Image, a.Name)
		if err != nil {
			return nil, err
		}
		return info(a.Image, sn), nil
	})
	s.Handle(snapshot.OpList, func(ctx context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
		a, err := decode(raw)
		if err != nil {
			return nil, err
		}
		snaps, err := root.Snapshots(ctx, a.Image)
		if err != nil {
			return nil, err
		}
		out := make([]snapshot.Info, len(snaps))
		for i, sn := range snaps {
			out[i] = info(a.Image, sn)
		}
		return out, nil
	})
	s.Handle(snapshot.OpDelete, func(ctx context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
		a, err := decode(raw)
		if err != nil {
			return nil, err
		}
		return nil, root.DeleteSnapshot(ctx, a.Image, a.Name)
	})
	s.Handle(snapshot.OpRollback, func(ctx context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
		a, err := decode(raw)
		if err != nil {
			return nil, err
		}
		return nil, root.Rollback(ctx, a.Image, a.Name)
	})
	s.Handle(snapshot.OpClone, func(ctx context.Context, raw json.RawMessage, progress func(control.Progress)) (any, error) {
		a, err := decode(raw)
		if err != nil {
			return nil, err
		}
		v, err := root.Clone(ctx, a.Image, a.Name, a.Dst, func(done, total int64) {
			progress(control.Progress{Done: done, Total: total, What: "copy"})
		})
		if err != nil {
			return nil, err
		}
		size := v.Size
		if v.Attrs.Size >= 0 && v.Attrs.Size <= v.Size {
			size = v.Attrs.Size
		}
		return snapshot.Info{Name: v.Name, Image: a.Image, Size: size, Used: v.Used,
			Path: filepath.Join(mnt, v.Name)}, nil
	})
}
