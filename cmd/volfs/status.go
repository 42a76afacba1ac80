package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	volfs "github.com/volfs/volfs/fs"
)

type statusCmd struct {
	json     bool
	warnFill float64
	timeout  time.Duration
}

func newStatusCmd() *cobra.Command {
	c := &statusCmd{}
	cmd := &cobra.Command{
		Use:   "status [flags] MOUNTPOINT",
		Short: "Show a mount's server: uptime, transport, requests, errors, pool fill",
		Long: `Show the server of a running volfs mount: its pid, version and uptime, what it
serves (the volume group, thin pool or devices), how the kernel reaches it
(FUSE over io_uring or /dev/fuse), the requests and bytes it served and the
errors by operation since it started, the files open now, and how full the
volume group and its thin pools are. A thin pool filled above --warn-fill
percent (data or metadata) gets a warning: a full thin pool stops every
write to every volume in it.`,
		Example: `  volfs status /var/lib/images
  volfs status --json /var/lib/images | jq .warnings`,
		Args: exactArgs(1, "exactly one MOUNTPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error { return c.run(cmd.OutOrStdout(), args[0]) },
	}
	cmd.Flags().BoolVar(&c.json, "json", false, "print JSON, sizes in bytes")
	cmd.Flags().Float64Var(&c.warnFill, "warn-fill", 80, "warn about thin pools filled above this percentage")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 30*time.Second, "how long to wait for the server's answer")
	return cmd
}

// statusReport is volfs status's JSON: the server's answer and the
// warnings drawn from it.
type statusReport struct {
	*volfs.Status
	WarnFill float64  `json:"warn_fill_percent"`
	Warnings []string `json:"warnings"`
}

func (c *statusCmd) run(w io.Writer, arg string) error {
	if c.warnFill < 0 || c.warnFill > 100 {
		return usagef("--warn-fill is a percentage (0-100), not %g", c.warnFill)
	}
	mnt, err := resolveMount(arg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var st volfs.Status
	if err := callServer(ctx, mnt, volfs.OpStatus, &st); err != nil {
		return err
	}
	r := statusReport{Status: &st, WarnFill: c.warnFill,
		Warnings: append(fillWarnings(&st, c.warnFill), degradedWarnings(&st)...)}
	if c.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	printStatus(w, &r)
	return nil
}

// degradedWarnings warns about images whose RAID volume lost an image:
// one more failure may lose data.
func degradedWarnings(st *volfs.Status) []string {
	var w []string
	for _, d := range st.Degraded {
		w = append(w, fmt.Sprintf("image %s (%s) is %s: replace the failed device (lvconvert --repair, or lvchange --refresh once it is back)",
			d.Name, d.Layout, d.Health))
	}
	return w
}

// fillWarnings warns about thin pools above the threshold: data (writes
// to unmapped blocks fail) and metadata (the pool goes read-only).
func fillWarnings(st *volfs.Status, threshold float64) []string {
	w := []string{}
	for _, p := range st.Pools {
		if p.Kind != "thin-pool" {
			continue
		}
		if p.DataPercent > threshold {
			w = append(w, fmt.Sprintf("thin pool %s data is %.1f%% full (above %g%%): extend it (lvextend -L+SIZE %s) or remove volumes before writes fail",
				p.Name, p.DataPercent, threshold, p.Name))
		}
		switch {
		case p.NeedsCheck:
			w = append(w, fmt.Sprintf("thin pool %s metadata needs a repair and the pool is read-only (%s): close its images (or unmount), then lvchange -an %s; lvconvert --repair %s; lvchange -ay %s",
				p.Name, cmp.Or(p.Health, "check needed"), p.Name, p.Name, p.Name))
		case p.MetadataFull():
			w = append(w, fmt.Sprintf("thin pool %s metadata is full (%.1f%%, %s): writes that need a new block fail with EIO; extend it (lvextend --poolmetadatasize +SIZE %s), no remount needed",
				p.Name, p.MetadataPercent, cmp.Or(p.Health, "full"), p.Name))
		case p.MetadataPercent > threshold:
			w = append(w, fmt.Sprintf("thin pool %s metadata is %.1f%% full (above %g%%): extend it (lvextend --poolmetadatasize +SIZE %s) before the pool fails",
				p.Name, p.MetadataPercent, threshold, p.Name))
		}
		if p.Health == "failed" {
			w = append(w, fmt.Sprintf("thin pool %s has failed: its images fail every I/O; see the kernel log (dmesg) and lvconvert --repair %s",
				p.Name, p.Name))
		}
	}
	return w
}

// printStatus writes volfs status's text.
func printStatus(w io.Writer, r *statusReport) {
	st := r.Status
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "mount:\t%s\n", st.Mount)
	fmt.Fprintf(tw, "source:\t%s\n", st.Source)
	mode := ""
	if st.ReadOnly {
		mode = ", read-only"
	}
	fmt.Fprintf(tw, "server:\tpid %d, volfs %s, up %s (since %s)%s\n", st.PID, st.Version,
		time.Duration(st.Uptime*float64(time.Second)).Round(time.Second), st.Started.UTC().Format(time.DateTime+" UTC"), mode)
	fmt.Fprintf(tw, "transport:\t%s\n", st.Transport)
	fmt.Fprintf(tw, "requests:\t%s\n", humanize.Comma(int64(st.Requests)))
	var errs []string
	for _, op := range sortedOps(st) {
		if n := st.Ops[op].Errors; n > 0 {
			errs = append(errs, fmt.Sprintf("%s %d", op, n))
		}
	}
	fmt.Fprintf(tw, "errors:\t%s\n", cmp.Or(strings.Join(errs, ", "), "none"))
	fmt.Fprintf(tw, "read:\t%s\n", size(int64(st.ReadBytes)))
	fmt.Fprintf(tw, "written:\t%s\n", size(int64(st.WrittenBytes)))
	fmt.Fprintf(tw, "open:\t%s, %s\n", plural(st.OpenFiles, "file"), plural(st.OpenHandles, "handle"))
	tw.Flush()
	for _, p := range st.Pools {
		fmt.Fprintln(w, poolLine(p))
	}
	if st.PoolsError != "" {
		fmt.Fprintf(w, "pools: unknown: %s\n", st.PoolsError)
	}
	for _, s := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", s)
	}
	if len(st.Ops) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "%-16s %12s %8s %9s\n", "OPERATION", "REQUESTS", "ERRORS", "AVERAGE")
		for _, op := range sortedOps(st) {
			c := st.Ops[op]
			avg := time.Duration(c.Seconds / float64(c.Requests) * float64(time.Second))
			fmt.Fprintf(w, "%-16s %12s %8s %9s\n", op, humanize.Comma(int64(c.Requests)), humanize.Comma(int64(c.Errors)), roundDuration(avg))
		}
	}
}

// roundDuration keeps three significant digits: 1.23ms, 45.6µs, 2.1s.
func roundDuration(d time.Duration) time.Duration {
	for _, r := range []time.Duration{time.Second, time.Millisecond, time.Microsecond} {
		switch {
		case d >= 100*r:
			return d.Round(r)
		case d >= 10*r:
			return d.Round(r / 10)
		case d >= r:
			return d.Round(r / 100)
		}
	}
	return d
}

// sortedOps are the operations of st, the busiest first (as nfsstat).
func sortedOps(st *volfs.Status) []string {
	ops := make([]string, 0, len(st.Ops))
	for op := range st.Ops {
		ops = append(ops, op)
	}
	slices.SortFunc(ops, func(a, b string) int {
		return cmp.Or(cmp.Compare(st.Ops[b].Requests, st.Ops[a].Requests), strings.Compare(a, b))
	})
	return ops
}
