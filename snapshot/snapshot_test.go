package snapshot

import (
	"fmt"
	"path/filepath"
	"strings"
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

// FuzzParsePath splits arbitrary paths (the CLI's arguments, sent as the
// control operations' image and snapshot names): no panic, and what it
// accepts names one image, or one snapshot of one image, of the mount at
// an absolute path, that put back together make the path given.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/var/lib/images/web", "/m/.snapshots/web/before upgrade", "/m/./web/", "/m/.snapshots/web",
		"/m/.snapshots", "relative/web", "/", "/.snapshots/web/x", "/m/../../web", "//m//.snapshots//a//b//"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		tg, err := ParsePath(p)
		if err != nil {
			return
		}
		for _, n := range []string{tg.Image, tg.Snap} {
			if strings.Contains(n, "/") || n == "." || n == ".." {
				t.Fatalf("ParsePath(%q) = %+v", p, tg)
			}
		}
		back := filepath.Join(tg.Mount, tg.Image)
		if tg.Snap != "" {
			back = filepath.Join(tg.Mount, Dir, tg.Image, tg.Snap)
		}
		if tg.Image == "" || !filepath.IsAbs(tg.Mount) || filepath.Clean(tg.Mount) != tg.Mount || back != filepath.Clean(p) ||
			tg.Snap == "" && tg.Image == Dir {
			t.Fatalf("ParsePath(%q) = %+v", p, tg)
		}
	})
}
