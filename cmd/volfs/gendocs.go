package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newGendocsCmd writes the man pages, generated from the commands' help;
// `make install` runs it (SOURCE_DATE_EPOCH dates them reproducibly).
// Shell completion comes from cobra's own `volfs completion SHELL`.
func newGendocsCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "gendocs DIR",
		Short:  "Write the man pages to DIR/man1 and DIR/man8",
		Hidden: true,
		Args:   exactArgs(1, "exactly one DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return genManPages(cmd.Root(), args[0])
		},
	}
}

func genManPages(root *cobra.Command, dir string) error {
	src := "volfs " + versionString()
	man1 := filepath.Join(dir, "man1")
	man8 := filepath.Join(dir, "man8")
	for _, d := range []string{man1, man8} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	root.DisableAutoGenTag = true
	for _, c := range root.Commands() {
		c.DisableAutoGenTag = true
	}
	if err := doc.GenManTree(root, &doc.GenManHeader{Title: "VOLFS", Section: "1", Source: src, Manual: "volfs manual"}, man1); err != nil {
		return err
	}
	helper := newMountHelperCmd()
	f, err := os.Create(filepath.Join(man8, helperName+".8"))
	if err != nil {
		return err
	}
	defer f.Close()
	hdr := &doc.GenManHeader{Title: strings.ToUpper(helperName), Section: "8", Source: src, Manual: "volfs manual"}
	if err := doc.GenMan(helper, hdr, f); err != nil {
		return fmt.Errorf("%s.8: %w", helperName, err)
	}
	return f.Close()
}
