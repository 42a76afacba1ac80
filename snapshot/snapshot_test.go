package snapshot

import (
	"fmt"
	"testing"
)

func TestParsePath(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Target
		err  bool
	}{
		{in: "/var/lib/images/web", want: Target{Mount: "/var/lib/images", Image: "web"}},
		{in: "/var/lib/images/.snapshots/web/before upgrade", want: Target{Mount: "/var/lib/images", Image: "web", Snap: "before upgrade"}},
		{in: "/m/./web/", want: Target{Mount: "/m", Image: "web"}},
		{in: "/m/.snapshots/web", err: true},
		{in: "/m/.snapshots", err: true},
		{in: "relative/web", err: true},
		{in: "/", err: true},
	} {
		got, err := ParsePath(c.in)
		if (err != nil) != c.err || err == nil && got != c.want {
			t.Errorf("ParsePath(%q) = %+v, %v; want %+v, error %v", c.in, got, err, c.want, c.err)
		}
	}
}

func ExampleParsePath() {
	t, _ := ParsePath("/var/lib/images/.snapshots/web/daily")
	fmt.Println(t.Mount, t.Image, t.Snap)
	// Output: /var/lib/images web daily
}
