package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	volfs "github.com/volfs/volfs/fs"
	"github.com/volfs/volfs/volmap"
)

type lsCmd struct {
	json    bool
	timeout time.Duration
}

func newLsCmd() *cobra.Command {
	c := &lsCmd{}
	cmd := &cobra.Command{
		Use:   "ls [flags] MOUNTPOINT",
		Short: "List the images of a mount: size, real use, volume, who has them open",
		Long: `List every image file of a running volfs mount: its size, the space its volume
really takes (a thin volume's allocated bytes, a linear volume's whole size),
what kind of volume it is and its device, and whether it is open: volfs's own
open handles and the processes holding it through the mount. The totals and the
free space of the volume group and its thin pools follow.

Sizes are in binary units (GiB); --json gives exact bytes.`,
		Example: `  volfs ls /var/lib/images
  volfs ls --json /var/lib/images | jq '.files[] | select(.handles > 0) | .name'`,
		Args: exactArgs(1, "exactly one MOUNTPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error { return c.run(cmd.OutOrStdout(), args[0]) },
	}
	cmd.Flags().BoolVar(&c.json, "json", false, "print JSON, sizes in bytes")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 30*time.Second, "how long to wait for the server's answer")
	return cmd
}

func (c *lsCmd) run(w io.Writer, arg string) error {
	mnt, err := resolveMount(arg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var l volfs.Listing
	if err := callServer(ctx, mnt, volfs.OpLs, &l); err != nil {
		return err
	}
	if c.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(l)
	}
	printListing(w, &l)
	return nil
}

func size(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }

// printListing writes the table of volfs ls.
func printListing(w io.Writer, l *volfs.Listing) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tUSED\tKIND\tLAYOUT\tHEALTH\tDEVICE\tOPEN\tBY")
	for _, f := range l.Files {
		kind, dev, used := orDash(f.Kind), orDash(f.Path), size(f.Used)
		if f.Pending || f.Used < 0 {
			used = "-"
		}
		if f.Pending {
			kind = "new"
		}
		open := "-"
		if f.Handles > 0 {
			open = strconv.Itoa(f.Handles)
		}
		by := holderList(f.Holders)
		if f.ActiveOn != "" {
			by = f.ActiveOn + " (shared VG)"
		}
		health := healthText(f.Details)
		if f.Busy {
			health = "busy" // an lvm command or flush is under way
			if f.Details.Health != "" && f.Details.Health != "ok" {
				health = healthText(f.Details) + ", busy"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Name, size(f.Size), used, kind,
			orDash(f.Layout), health, dev, open, by)
	}
	tw.Flush()
	fmt.Fprintf(w, "%s, %s, %s used\n", plural(l.Total.Files, "file"), size(l.Total.Size), size(l.Total.Used))
	for _, p := range l.Pools {
		fmt.Fprintln(w, poolLine(p))
	}
	if l.PoolsError != "" {
		fmt.Fprintf(w, "free space unknown: %s\n", l.PoolsError)
	}
	if !l.HoldersComplete {
		fmt.Fprintln(w, "note: looking for processes in /proc took too long; some holders may be missing")
	}
}

// healthText is a volume's health for the table: "ok", "syncing 42%"
// while a RAID volume's images catch up, or what LVM says is wrong.
func healthText(d volmap.Details) string {
	if d.Health == "ok" && d.SyncPercent != nil && *d.SyncPercent < 100 {
		return fmt.Sprintf("syncing %.0f%%", *d.SyncPercent)
	}
	return orDash(d.Health)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// holderList names the processes holding a file: "qemu-system-x86 (1234)".
func holderList(hs []volfs.Holder) string {
	if len(hs) == 0 {
		return "-"
	}
	s := make([]string, len(hs))
	for i, h := range hs {
		s[i] = fmt.Sprintf("%s (%d)", h.Command, h.PID)
	}
	return strings.Join(s, ", ")
}

// poolLine describes a VG or thin pool as lvs users read it.
func poolLine(p volmap.Pool) string {
	s := fmt.Sprintf("%s: %s, %s free", p.Name, size(p.Size), size(p.Free))
	if p.Kind == "thin-pool" {
		s = "thin pool " + s
		if p.DataPercent >= 0 {
			s += fmt.Sprintf(" (data %.1f%%, metadata %.1f%%)", p.DataPercent, max(p.MetadataPercent, 0))
		} else {
			s += " (inactive: fill unknown)"
		}
	} else if p.Kind == "vg" {
		s = "volume group " + s
	}
	return s
}
