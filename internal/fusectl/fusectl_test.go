package fusectl

import (
	"os"
	"testing"

	"github.com/volfs/volfs/internal/mountinfo"
)

// fusectl is mounted on a private directory where the system has not
// mounted it, and nothing is left behind.
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

func TestConn(t *testing.T) {
	if got := Conn(mountinfo.Mount{Major: 0, Minor: 93}); got != "93" {
		t.Errorf("Conn(0:93) = %q", got)
	}
	if got := Conn(mountinfo.Mount{Major: 1, Minor: 2}); got != "1048578" {
		t.Errorf("Conn(1:2) = %q", got)
	}
}
