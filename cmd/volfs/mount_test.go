package main

import (
	"errors"
	"strings"
	"testing"
)

// TestMountLayoutFlags: --layout, --mirrors and --stripes are checked
// before anything is mounted, and their mistakes are usage errors.
func TestMountLayoutFlags(t *testing.T) {
	for _, c := range []struct {
		cmd  mountCmd
		want string // "" accepted
	}{
		{mountCmd{vg: "vg0", layout: "raid1"}, ""},
		{mountCmd{vg: "vg0", layout: "raid1", mirrors: 2}, ""},
		{mountCmd{vg: "vg0", layout: "striped", stripes: 3}, ""},
		{mountCmd{vg: "vg0", layout: "linear", thinPool: "pool"}, ""},
		{mountCmd{devices: []string{"/dev/loop0"}, layout: "raid1"}, "go with --vg"},
		{mountCmd{vg: "vg0", mirrors: 1}, "go with --layout"},
		{mountCmd{vg: "vg0", layout: "raid1", thinPool: "pool"}, "take the layout of their pool"},
		{mountCmd{vg: "vg0", layout: "raid5", stripes: 1}, "raid5 needs 2 to"},
		{mountCmd{vg: "vg0", layout: "mirror"}, "unknown type"},
		{mountCmd{vg: "vg0", layout: "striped", mirrors: 1}, "striped keeps no mirrors"},
	} {
		c.cmd.cacheTTL, c.cmd.logLevel = 1, "info"
		l, err := c.cmd.layoutOf()
		if err == nil {
			err = c.cmd.run("/nonexistent/volfs-test-mountpoint")
		}
		var ue usageError
		switch {
		case c.want == "" && err != nil && errors.As(err, &ue):
			t.Errorf("%+v: %v, want accepted", c.cmd, err)
		case c.want != "" && (!errors.As(err, &ue) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v (layout %v), want a usage error saying %q", c.cmd, err, l, c.want)
		}
	}
}
