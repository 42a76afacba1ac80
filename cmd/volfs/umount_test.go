package main

import (
	"os"
	"testing"
)

// --force mounts fusectl on a private directory where the system has not
// mounted it, and leaves nothing behind.
func TestWithFusectl(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mounts fusectl)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs FUSE")
	}
	var seen string
	err := withFusectl(func(dir string) error {
		seen = dir
		_, err := os.ReadDir(dir)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(seen); !os.IsNotExist(err) {
		t.Errorf("%s is left behind: %v", seen, err)
	}
}
