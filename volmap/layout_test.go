package volmap

import (
	"errors"
	"fmt"
	"testing"
)

func TestParseLayout(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Layout
		pvs  int
		err  bool
	}{
		{in: "linear", want: Layout{Type: "linear"}, pvs: 1},
		{in: "  linear  ", want: Layout{Type: "linear"}, pvs: 1},
		{in: "raid1", want: Layout{Type: "raid1", Mirrors: 1}, pvs: 2},
		{in: "raid1 mirrors=2", want: Layout{Type: "raid1", Mirrors: 2}, pvs: 3},
		{in: "striped", want: Layout{Type: "striped", Stripes: 2}, pvs: 2},
		{in: "striped stripes=3", want: Layout{Type: "striped", Stripes: 3}, pvs: 3},
		{in: "raid5", want: Layout{Type: "raid5", Stripes: 2}, pvs: 3},
		{in: "raid6", want: Layout{Type: "raid6", Stripes: 3}, pvs: 5},
		{in: "raid10 stripes=2 mirrors=1", want: Layout{Type: "raid10", Stripes: 2, Mirrors: 1}, pvs: 4},
		{in: "raid10 mirrors=2", want: Layout{Type: "raid10", Stripes: 2, Mirrors: 2}, pvs: 6},
		{in: "", err: true},
		{in: "raid7", err: true},
		{in: "thin", err: true},
		{in: "linear mirrors=1", err: true},
		{in: "linear stripes=2", err: true},
		{in: "striped stripes=1", err: true},
		{in: "striped mirrors=1", err: true},
		{in: "raid1 stripes=2", err: true},
		{in: "raid1 mirrors=64", err: true},
		{in: "raid5 stripes=1", err: true},
		{in: "raid5 mirrors=1", err: true},
		{in: "raid6 stripes=2", err: true},
		{in: "raid10 stripes=9 mirrors=7", err: true},
		{in: "raid1 mirrors=x", err: true},
		{in: "raid1 mirrors=-1", err: true},
		{in: "raid1 mirrors", err: true},
		{in: "raid1 mirrors=1 mirrors=1", err: true},
		{in: "raid1 copies=1", err: true},
		{in: "striped stripes=129", err: true},
	} {
		got, err := ParseLayout(c.in)
		if c.err {
			if err == nil || !errors.Is(err, ErrLayout) {
				t.Errorf("ParseLayout(%q) = %+v, %v; want an error wrapping ErrLayout", c.in, got, err)
			}
			continue
		}
		if err != nil || got != c.want || got.PVs() != c.pvs {
			t.Errorf("ParseLayout(%q) = %+v (%d PVs), %v; want %+v (%d PVs)", c.in, got, got.PVs(), err, c.want, c.pvs)
		}
		// String is what ParseLayout reads back.
		if back, err := ParseLayout(got.String()); err != nil || back != got {
			t.Errorf("ParseLayout(%q) = %+v, %v; want %+v", got.String(), back, err, got)
		}
	}
}

func FuzzParseLayout(f *testing.F) {
	for _, s := range []string{"linear", "raid1 mirrors=1", "raid10 stripes=2 mirrors=1", "striped stripes=x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLayout(s)
		if err != nil {
			return
		}
		if l.Check() != nil || l.PVs() < 1 {
			t.Fatalf("ParseLayout(%q) = %+v: accepted but invalid", s, l)
		}
		if back, err := ParseLayout(l.String()); err != nil || back != l {
			t.Fatalf("round trip of %q: %+v -> %q -> %+v, %v", s, l, l.String(), back, err)
		}
	})
}

func ExampleParseLayout() {
	l, _ := ParseLayout("raid10")
	fmt.Println(l, "needs", l.PVs(), "PVs")
	_, err := ParseLayout("raid5 stripes=1")
	fmt.Println(err)
	// Output:
	// raid10 stripes=2 mirrors=1 needs 4 PVs
	// layout "raid5 stripes=1": raid5 needs 2 to 63 stripes: layout refused
}
