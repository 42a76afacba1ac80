package lvm

import (
	"slices"
	"testing"

	"github.com/volfs/volfs/volmap"
)

func TestLayoutOf(t *testing.T) {
	for _, c := range []struct {
		lv   LV
		want volmap.Layout
	}{
		{LV{SegType: "linear", Stripes: 1, DataStripes: 1}, volmap.Layout{Type: "linear"}},
		{LV{SegType: "striped", Stripes: 1, DataStripes: 1}, volmap.Layout{Type: "linear"}},
		{LV{SegType: "striped", Stripes: 3, DataStripes: 3}, volmap.Layout{Type: "striped", Stripes: 3}},
		{LV{SegType: "raid1", Stripes: 2, DataStripes: 2}, volmap.Layout{Type: "raid1", Mirrors: 1}},
		{LV{SegType: "raid1", Stripes: 3, DataStripes: 3}, volmap.Layout{Type: "raid1", Mirrors: 2}},
		{LV{SegType: "raid5", Stripes: 3, DataStripes: 2}, volmap.Layout{Type: "raid5", Stripes: 2}},
		{LV{SegType: "raid5_ls", Stripes: 4, DataStripes: 3}, volmap.Layout{Type: "raid5", Stripes: 3}},
		{LV{SegType: "raid6_zr", Stripes: 5, DataStripes: 3}, volmap.Layout{Type: "raid6", Stripes: 3}},
		{LV{SegType: "raid10", Stripes: 4, DataStripes: 2}, volmap.Layout{Type: "raid10", Stripes: 2, Mirrors: 1}},
		{LV{SegType: "raid10", Stripes: 4, DataStripes: 4}, volmap.Layout{Type: "raid10", Stripes: 2, Mirrors: 1}},
		{LV{SegType: "thin", Stripes: 1}, volmap.Layout{Type: "thin"}},
	} {
		if got := layoutOf(c.lv); got != c.want {
			t.Errorf("layoutOf(%s, stripes %d, data %d) = %+v, want %+v", c.lv.SegType, c.lv.Stripes, c.lv.DataStripes, got, c.want)
		}
	}
}

func TestLayoutArgs(t *testing.T) {
	for in, want := range map[string][]string{
		"linear":                     {"--type", "linear"},
		"striped stripes=3":          {"--type", "striped", "-i", "3"},
		"raid1 mirrors=2":            {"--type", "raid1", "-m", "2"},
		"raid5":                      {"--type", "raid5", "-i", "2"},
		"raid6":                      {"--type", "raid6", "-i", "3"},
		"raid10 stripes=2 mirrors=1": {"--type", "raid10", "-i", "2", "-m", "1"},
	} {
		l, err := volmap.ParseLayout(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := layoutArgs(l); !slices.Equal(got, want) {
			t.Errorf("layoutArgs(%s) = %q, want %q", in, got, want)
		}
	}
}

func TestHealth(t *testing.T) {
	for _, c := range []struct {
		lv       LV
		want     string
		degraded bool
	}{
		{LV{Attr: "rwi-a-r---"}, "ok", false},
		{LV{Attr: "rwi-a-r-r-", Health: "refresh needed"}, "degraded (refresh needed)", true},
		{LV{Attr: "rwi-a-r-r-"}, "degraded (refresh needed)", true}, // lvs without lv_health_status
		{LV{Attr: "rwi-a-r-p-", Health: "partial"}, "degraded (partial)", true},
		{LV{Attr: "rwi-a-r-m-", Health: "mismatches exist"}, "mismatches exist", false},
		{LV{Attr: "-wi-a-----"}, "ok", false},
	} {
		if got, deg := health(c.lv); got != c.want || deg != c.degraded {
			t.Errorf("health(%q, %q) = %q, %v; want %q, %v", c.lv.Attr, c.lv.Health, got, deg, c.want, c.degraded)
		}
	}
}

func TestRoundUpStripes(t *testing.T) {
	d := &Driver{extent: 4 << 20}
	striped2, _ := volmap.ParseLayout("striped stripes=2")
	raid1, _ := volmap.ParseLayout("raid1")
	for _, c := range []struct {
		size int64
		l    volmap.Layout
		want int64
	}{
		{1, volmap.Layout{}, 4 << 20},
		{1, raid1, 4 << 20},
		{5 << 20, raid1, 8 << 20},
		{1, striped2, 8 << 20},
		{8 << 20, striped2, 8 << 20},
		{9 << 20, striped2, 16 << 20},
	} {
		if got, err := d.roundUpStripes(c.size, c.l); err != nil || got != c.want {
			t.Errorf("roundUpStripes(%d, %s) = %d, %v; want %d", c.size, c.l, got, err, c.want)
		}
	}
}

// lvs-raid1-degraded.json is lvm's report (lvFields) of a raid1 LV whose
// second image's table was switched to error, from the guest test
// TestLayoutDegraded.
func TestParseLVsRAID(t *testing.T) {
	lvs, err := ParseLVs(readTestdata(t, "lvs-raid1-degraded.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(lvs) != 1 {
		t.Fatalf("got %d LVs, want 1", len(lvs))
	}
	lv := lvs[0]
	if lv.SegType != "raid1" || lv.Stripes != 2 || lv.DataStripes != 2 || lv.Health != "refresh needed" ||
		lv.SyncPercent != 100 || !lv.Public() {
		t.Errorf("r = %+v", lv)
	}
	if l := layoutOf(lv); l.String() != "raid1 mirrors=1" {
		t.Errorf("layoutOf(r) = %q", l)
	}
	if h, deg := health(lv); h != "degraded (refresh needed)" || !deg {
		t.Errorf("health(r) = %q, %v", h, deg)
	}
}
