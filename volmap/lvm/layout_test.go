package lvm

import (
	"bytes"
	"log/slog"
	"maps"
	"slices"
	"strings"
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

func TestPlanConvert(t *testing.T) {
	const ext = 4 << 20
	l := func(s string) volmap.Layout {
		x, err := volmap.ParseLayout(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	for _, c := range []struct {
		seg, from, to string
		size          int64
		args          []string
		images        int
		imageSize     int64
		refused       string // part of the reason, "" when planned
	}{
		{"linear", "linear", "raid1 mirrors=2", 10 << 20, []string{"--type", "raid1", "-m", "2"}, 2, 12 << 20, ""},
		{"raid1", "raid1 mirrors=1", "raid1 mirrors=2", 8 << 20, []string{"--type", "raid1", "-m", "2"}, 1, 8 << 20, ""},
		{"raid1", "raid1 mirrors=2", "raid1 mirrors=1", 8 << 20, []string{"--type", "raid1", "-m", "1"}, 0, 8 << 20, ""},
		{"raid1", "raid1 mirrors=1", "linear", 8 << 20, []string{"--type", "linear"}, 0, 0, ""},
		{"striped", "striped stripes=2", "raid5 stripes=2", 16 << 20, []string{"--type", "raid5_n"}, 1, 8 << 20, ""},
		{"striped", "striped stripes=3", "raid6 stripes=3", 12 << 20, []string{"--type", "raid6_n_6"}, 2, 4 << 20, ""},
		{"raid5_n", "raid5 stripes=2", "striped stripes=2", 16 << 20, []string{"--type", "striped"}, 0, 0, ""},
		{"raid5_ls", "raid5 stripes=2", "striped stripes=2", 16 << 20, nil, 0, 0, "only raid5_n and raid6_n_6"},
		{"linear", "linear", "striped stripes=2", 8 << 20, nil, 0, 0, "only in four steps"},
		{"striped", "striped stripes=2", "linear", 8 << 20, nil, 0, 0, "only in four steps"},
		{"striped", "striped stripes=2", "raid5 stripes=3", 8 << 20, nil, 0, 0, "no one-step conversion"},
		{"striped", "striped stripes=2", "striped stripes=3", 8 << 20, nil, 0, 0, "is a reshape"},
		{"linear", "linear", "raid10 stripes=2 mirrors=1", 8 << 20, nil, 0, 0, "no one-step conversion"},
	} {
		p, err := planConvert(LV{SegType: c.seg, Size: c.size}, l(c.from), l(c.to), ext)
		name := c.seg + " " + c.from + " -> " + c.to
		switch {
		case c.refused != "":
			if err == nil || !strings.Contains(err.Error(), c.refused) {
				t.Errorf("%s: %+v, %v; want a refusal with %q", name, p, err, c.refused)
			}
		case err != nil:
			t.Errorf("%s: %v", name, err)
		case !slices.Equal(p.args, c.args) || p.newImages != c.images || p.newImages > 0 && p.imageSize != c.imageSize:
			t.Errorf("%s: %+v, want args %q, %d images of %d", name, p, c.args, c.images, c.imageSize)
		}
	}
}

// TestDevicesOf follows a raid1 LV's images and metadata LVs to their PVs
// (lvs -a -o lv_name,devices, as lvm 2.03 writes it).
func TestDevicesOf(t *testing.T) {
	rows, err := parseRows([]byte(`{"report":[{"lv":[
		{"lv_name":"a", "devices":"a_rimage_0(0),a_rimage_1(0)"},
		{"lv_name":"[a_rimage_0]", "devices":"/dev/vdb(0)"},
		{"lv_name":"[a_rimage_1]", "devices":"/dev/vdc(1)"},
		{"lv_name":"[a_rimage_1]", "devices":"/dev/vdd(7)"},
		{"lv_name":"[a_rmeta_0]", "devices":"/dev/vdb(2)"},
		{"lv_name":"[a_rmeta_1]", "devices":"/dev/vde(0)"},
		{"lv_name":"ab", "devices":"/dev/vdf(0)"},
		{"lv_name":"lin", "devices":"/dev/vdf(9)"}
	]}]}`), "lv")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]string{
		"a":    {"/dev/vdb", "/dev/vdc", "/dev/vdd", "/dev/vde"},
		"lin":  {"/dev/vdf"},
		"none": nil,
	} {
		got := slices.Sorted(maps.Keys(devicesOf(rows, name)))
		if !slices.Equal(got, want) {
			t.Errorf("devicesOf(%s) = %q, want %q", name, got, want)
		}
	}
}

// TestNoteHealth: a file's RAID LV seen degraded is logged once, again
// when how it is degraded changes, and once when it is whole again.
func TestNoteHealth(t *testing.T) {
	var buf bytes.Buffer
	d := &Driver{cfg: Config{VG: "vg0"}, log: slog.New(slog.NewTextHandler(&buf, nil))}
	r := func(attr, h string) LV {
		return LV{Name: "r", UUID: "u1", Role: []string{"public"}, SegType: "raid1", Stripes: 2, Attr: attr, Health: h}
	}
	pool := LV{Name: "p", UUID: "u2", Role: []string{"private"}, SegType: "raid1", Stripes: 2, Health: "partial"}
	for _, rows := range [][]LV{
		{r("rwi-a-r---", ""), pool},
		{r("rwi-a-r-r-", "refresh needed"), pool},
		{r("rwi-a-r-r-", "refresh needed")},
		{r("rwi-a-r-p-", "partial")},
		{r("rwi-a-r---", "")},
		{r("rwi-a-r---", "")},
	} {
		d.noteHealth(rows)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{`level=WARN msg="RAID volume is degraded`, `health="degraded (refresh needed)"`,
		`level=WARN msg="RAID volume is degraded`, `health="degraded (partial)"`,
		`level=INFO msg="RAID volume is no longer degraded"`, `volume=r`}
	if len(lines) != 3 {
		t.Fatalf("log:\n%s\nwant 3 lines", buf.String())
	}
	for i, l := range lines {
		if !strings.Contains(l, want[2*i]) || !strings.Contains(l, want[2*i+1]) || !strings.Contains(l, "lv=vg0/r") {
			t.Errorf("line %d: %s\nwant %q and %q", i, l, want[2*i], want[2*i+1])
		}
	}
}

// TestVGPVs: a missing PV ("[unknown]" in pvs, as after a disk failed
// under a raid1 LV in TestLayoutDegraded) is not passed to --devices.
func TestVGPVs(t *testing.T) {
	rows, err := parseRows([]byte(`{"report":[{"pv":[
		{"pv_name":"/dev/mapper/vgpv0", "vg_name":"vg"},
		{"pv_name":"/dev/mapper/vgpv2", "vg_name":"vg"},
		{"pv_name":"[unknown]", "vg_name":"vg"},
		{"pv_name":"/dev/vdz", "vg_name":"other"}
	]}]}`), "pv")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := vgPVs(rows, "vg"), []string{"/dev/mapper/vgpv0", "/dev/mapper/vgpv2"}; !slices.Equal(got, want) {
		t.Errorf("vgPVs = %q, want %q", got, want)
	}
}
