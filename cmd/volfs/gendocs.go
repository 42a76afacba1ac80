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
	for _, helper := range []*cobra.Command{newMountHelperCmd(), newUmountHelperCmd()} {
		name := helper.Name()
		hdr := &doc.GenManHeader{Title: strings.ToUpper(name), Section: "8", Source: src, Manual: "volfs manual"}
		if err := genMan(helper, hdr, filepath.Join(man8, name+".8")); err != nil {
			return err
		}
	}
	return nil
}

func genMan(cmd *cobra.Command, hdr *doc.GenManHeader, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := doc.GenMan(cmd, hdr, f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
