// Command volfs mounts volumes (LVM logical volumes, existing block devices)
// as regular image files.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes: scripts can tell a mistake in the command line from a failure.
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks an error in the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %s (see %s --help)", cmd.CommandPath(), what, cmd.CommandPath())
		}
		return nil
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "volfs",
		Short: "Volumes as image files",
		Long: `volfs mounts a FUSE file system in which every volume appears as a regular
image file: every logical volume of an LVM volume group (--vg), or existing
block devices (--device). Reads and writes go straight to the volume's block
device.`,
		Version:       versionString(),
		Args:          unknownCommand,
		RunE:          func(cmd *cobra.Command, args []string) error { return cmd.Help() },
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("volfs {{.Version}}\n")
	root.SuggestionsMinimumDistance = 2
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see %s --help)", err, c.CommandPath())}
	})
	root.AddCommand(newMountCmd(), newUmountCmd(), newVersionCmd(), newLsCmd(), newStatusCmd())
	root.AddCommand(newSnapshotCmd(), newCloneCmd(), newLayoutCmd())
	root.AddCommand(newGendocsCmd())
	addCompletions(root)
	return root
}

// unknownCommand refuses `volfs bogus` as a mistake in the command line
// (exit 2), with cobra's suggestions.
func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	hint := ""
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		hint = " (did you mean " + strings.Join(s, " or ") + "?)"
	}
	return usagef("unknown command %q%s; see volfs --help", args[0], hint)
}

func main() {
	if code, ok := runAsHelper(os.Args[0]); ok { // mount.fuse.volfs, umount.fuse.volfs
		os.Exit(code)
	}
	err := newRootCmd().Execute()
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "volfs: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		os.Exit(exitUsage)
	}
	os.Exit(exitFailure)
}
