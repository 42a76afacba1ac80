package lvm

import (
	"log/slog"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// Which LVs of a real VG (captured in the test guest: linear, escaped
// names, inactive, thin pool, thin volume, inactive thin snapshot, COW
// snapshot, a Replace leftover) are files, and what the volumes look like.
func TestFilesOfCapturedVG(t *testing.T) {
	lvs, err := ParseLVs(readTestdata(t, "lvs-vg-cap.json"))
	if err != nil {
		t.Fatal(err)
	}
	files := func(d *Driver) map[string]volmap.Volume {
		m := map[string]volmap.Volume{}
		for _, lv := range lvs {
			if f, ok := d.fileName(lv); ok {
				m[f] = d.volume(lv, f)
			}
		}
		return m
	}
	d := &Driver{cfg: Config{VG: "vg-cap"}, log: slog.New(slog.DiscardHandler)}
	got := files(d)
	want := []string{"cow-origin", "cow-snap", "inactive", "snapshot-1", "thin-a", "thin-a-snap", "web disk"}
	if names := slices.Sorted(maps.Keys(got)); !slices.Equal(names, want) {
		t.Fatalf("files = %v, want %v", names, want)
	}
	web := got["web disk"]
	wantAttrs := meta.Attrs{Mode: 0o640, UID: 107, GID: 107, Mtime: time.Unix(1700000000, 5), Size: 5000001,
		Xattrs: map[string][]byte{"user.k": []byte("v")}}
	if web.ID != "lpsuZ0-KD0q-F2fc-C5u1-F831-eNsD-0Refia" || web.Size != 5<<20 || web.Used != -1 || web.Thin || !web.Attrs.Equal(wantAttrs) {
		t.Errorf("web disk = %+v", web)
	}
	if a := got["inactive"].Attrs; !a.Equal(DefaultAttrs(time.Time{})) {
		t.Errorf("untagged LV attrs = %+v", a)
	}
	thin := got["thin-a"]
	if !thin.Thin || thin.Used != 3147406 { // 9.38% of 32 MiB
		t.Errorf("thin-a = %+v", thin)
	}
	if snap := got["thin-a-snap"]; !snap.Thin || snap.Used != -1 {
		t.Errorf("inactive thin snapshot = %+v", snap)
	}

	d.cfg.Tag = "volfs"
	if names := slices.Sorted(maps.Keys(files(d))); !slices.Equal(names, []string{"snapshot-1", "thin-a", "web disk"}) {
		t.Errorf("files with tag volfs = %v", names)
	}
}

func TestRoundUp(t *testing.T) {
	d := &Driver{extent: 4 << 20}
	for _, tc := range []struct{ in, want int64 }{
		{-1, 4 << 20}, {0, 4 << 20}, {1, 4 << 20}, {4 << 20, 4 << 20}, {4<<20 + 1, 8 << 20}, {1 << 40, 1 << 40},
	} {
		if got, err := d.roundUp(tc.in); err != nil || got != tc.want {
			t.Errorf("roundUp(%d) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	if _, err := d.roundUp(1<<63 - 1); err == nil {
		t.Error("roundUp did not refuse an overflowing size")
	}
}

func TestCheckConfigNames(t *testing.T) {
	for _, vg := range []string{"vg0", "my-vg", "a+b_c.d"} {
		if err := checkVGName(vg); err != nil {
			t.Errorf("checkVGName(%q) = %v", vg, err)
		}
	}
	for _, vg := range []string{"", "-vg", "..", "a/b", "a b"} {
		if err := checkVGName(vg); err == nil {
			t.Errorf("checkVGName(%q) accepted", vg)
		}
	}
	for _, tag := range []string{"volfs", "mnt:1", "a/b=c&d#e!"} {
		if err := checkTag(tag); err != nil {
			t.Errorf("checkTag(%q) = %v", tag, err)
		}
	}
	for _, tag := range []string{"volfs.x", "a b", "a,b"} {
		if err := checkTag(tag); err == nil {
			t.Errorf("checkTag(%q) accepted", tag)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
}
