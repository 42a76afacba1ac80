package lvm

import (
	"strings"
	"testing"
)

// FuzzSnapTags decodes arbitrary tags of a snapshot LV: no panic; a
// snapshot's name is a file name of its .snapshots directory (a '/' in a
// name would fail the whole directory's readdir in the kernel), and the
// origin and name volfs tags a snapshot with come back unchanged.
func FuzzSnapTags(f *testing.F) {
	f.Add("vm-1234", "before upgrade", "volfs.snap.name=YS9i")
	f.Add("x", "..", "volfs.snap.name=Li4")
	f.Add("x", strings.Repeat("n", 256), "volfs.snap.of=")
	d := &Driver{cfg: Config{VG: "vg0"}, tag: DefaultTag}
	f.Fuzz(func(t *testing.T, origin, name, tag string) {
		lv := LV{Name: "+2F" + snapLabel + "0011", Tags: []string{DefaultTag, snapTag(tagSnapOf, origin), tag}}
		if _, n, ok := d.snapOf(lv); ok && CheckSnapshotName(n) != nil {
			t.Fatalf("snapOf(%q) = name %q", lv.Tags, n)
		}
		lv.Tags[2] = snapTag(tagSnapName, name)
		o, n, ok := d.snapOf(lv)
		if valid := origin != "" && CheckSnapshotName(name) == nil; ok != valid || ok && (o != origin || n != name) {
			t.Fatalf("snapOf(%q) = %q %q %v", lv.Tags, o, n, ok)
		}
	})
}
