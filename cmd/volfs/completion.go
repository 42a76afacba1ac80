package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/volfs/volfs/internal/mountinfo"
)

// addCompletions adds what the shell completion (`volfs completion SHELL`)
// offers beyond file names: volfs mount points to commands that take one,
// VG names to --vg, the log levels. Commands that another file defines are
// looked up by name, so each stays one small file.
func addCompletions(root *cobra.Command) {
	for _, c := range root.Commands() {
		switch c.Name() {
		case "umount", "ls", "status":
			if c.ValidArgsFunction == nil {
				c.ValidArgsFunction = completeMountpoints
			}
		case "mount":
			c.ValidArgsFunction = func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
				return nil, cobra.ShellCompDirectiveFilterDirs
			}
			_ = c.RegisterFlagCompletionFunc("vg", completeVGs)
			_ = c.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions(
				[]string{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))
			_ = c.RegisterFlagCompletionFunc("state-dir", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
				return nil, cobra.ShellCompDirectiveFilterDirs
			})
		}
	}
}

// completeMountpoints offers the mount points of volfs mounts.
func completeMountpoints(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return volfsMounts(), cobra.ShellCompDirectiveNoFileComp
}

// volfsMounts lists the mount points of fuse.volfs mounts.
func volfsMounts() []string {
	all, _ := mountinfo.All()
	var out []string
	for _, m := range all {
		if m.FSType == "fuse.volfs" {
			out = append(out, m.Dir)
		}
	}
	return out
}

// completeVGs offers the volume groups lvm knows; without lvm, or when it
// fails, nothing (quietly: a completion must not print errors).
func completeVGs(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "vgs", "--noheadings", "-o", "vg_name")
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	out, err := cmd.Output()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return strings.Fields(string(out)), cobra.ShellCompDirectiveNoFileComp
}
