package lvm

import (
	"log/slog"
	"slices"
	"testing"

	"github.com/volfs/volfs/internal/proc"
)

// What the next mount does with every state a crashed Replace("a", "b")
// can leave (the LVs as lvs lists them after each step), and with states
// that are not its own.
func TestPlanRecovery(t *testing.T) {
	d := &Driver{cfg: Config{VG: "vg0"}, tag: DefaultTag, log: slog.New(slog.DiscardHandler)}
	const boot = "6b0f6c35-0cbe-4f2b-9d67-0a3e5c4f1e11"
	owner := proc.ID{Pid: 4242, Start: 777}
	intent := replaceIntent{srcUUID: "SRC-uuid", bootID: boot, owner: owner, target: "b", dstUUID: "DST-uuid"}
	tag := intent.encode()
	aside := "+2Fvolfs-aside-0a1b2c3d"
	src := LV{Name: "a", UUID: "SRC-uuid", Tags: []string{"volfs"}}
	dst := LV{Name: "b", UUID: "DST-uuid", Tags: []string{"volfs", "volfs.mode=0644"}}
	tagged := func(lv LV, name string, tags ...string) LV {
		lv.Name = name
		lv.Tags = append(append([]string(nil), lv.Tags...), tags...)
		return lv
	}
	vg := func(lvs ...LV) map[string]LV {
		m := map[string]LV{}
		for _, lv := range lvs {
			m[lv.Name] = lv
		}
		return m
	}
	oldTag := "volfs-replace=SRC-uuid:" + boot + ":4242:b" // written by an older volfs: no start time
	// Written by a volfs without the target's UUID.
	noDstTag := "volfs-replace=SRC-uuid:" + boot + ":4242:777:b"
	// Another tool's LV, put under the name b just before the intent.
	other := LV{Name: "b", UUID: "OTHER", Tags: []string{"volfs"}}
	dead := func(proc.ID) bool { return false }
	alive := func(id proc.ID) bool { return id == owner }
	// The pid runs, but it is a later process (another start time).
	recycled := func(id proc.ID) bool { return id.Pid == 4242 && id.Start == 778 }
	// What ownerRunning checks for an older intent: the bare pid.
	pidAlive := func(id proc.ID) bool { return id.Pid == 4242 }
	for _, tc := range []struct {
		what  string
		lvs   map[string]LV
		check string // the LV planned for
		boot  string
		alive func(proc.ID) bool
		want  recoveryAction
	}{
		{"before step 1: nothing to do", vg(src, dst), "b", boot, dead, recoverNone},
		{"after step 1 (intent on b, not moved)", vg(src, tagged(dst, "b", tag)), "b", boot, dead, recoverDropTag},
		{"after step 2 (b aside, a not renamed)", vg(src, tagged(dst, aside, tag)), aside, boot, dead, recoverUndo},
		{"after step 3 (a took the name b)", vg(tagged(src, "b"), tagged(dst, aside, tag)), aside, boot, dead, recoverFinish},
		{"undo interrupted between rename back and deltag", vg(src, tagged(dst, "b", tag)), "b", boot, dead, recoverDropTag},
		{"the replacing server still runs", vg(src, tagged(dst, aside, tag)), aside, boot, alive, recoverWait},
		{"same pid after a reboot: not the same process", vg(src, tagged(dst, aside, tag)), aside, "other-boot", alive, recoverUndo},
		{"name b taken by another LV since", vg(src, LV{Name: "b", UUID: "OTHER"}, tagged(dst, aside, tag)), aside, boot, dead, recoverStuck},
		{"open target detached, a not renamed", vg(src, tagged(dst, "+2Fvolfs-deleted-0011223344556677", tag)), "+2Fvolfs-deleted-0011223344556677", boot, dead, recoverUndo},
		{"open target detached, a took the name", vg(tagged(src, "b"), tagged(dst, "+2Fvolfs-deleted-0011223344556677", tag)), "+2Fvolfs-deleted-0011223344556677", boot, dead, recoverFinish},
		{"file removed while open: purged, not a rename", vg(src, tagged(dst, "+2Fvolfs-deleted-0011223344556677")), "+2Fvolfs-deleted-0011223344556677", boot, dead, recoverNone},
		{"aside LV of an older volfs, no intent", vg(src, tagged(dst, aside)), aside, boot, dead, recoverUnknown},
		{"pid reused by a later process: not the replacing server", vg(src, tagged(dst, aside, tag)), aside, boot, recycled, recoverUndo},
		{"older intent, its pid runs: wait", vg(src, tagged(dst, aside, oldTag)), aside, boot, pidAlive, recoverWait},
		{"older intent, dead: undo", vg(src, tagged(dst, aside, oldTag)), aside, boot, dead, recoverUndo},
		{"malformed intent is no intent", vg(src, tagged(dst, "b", "volfs-replace=x")), "b", boot, dead, recoverNone},
		{"after step 3, but the LV set aside is another tool's: not removed", vg(tagged(src, "b"), tagged(other, aside, tag)), aside, boot, dead, recoverStuck},
		{"after step 2, the LV set aside is another tool's: its name back", vg(src, tagged(other, aside, tag)), aside, boot, dead, recoverUndo},
		{"intent without the target's UUID, after step 3: finish", vg(tagged(src, "b"), tagged(dst, aside, noDstTag)), aside, boot, dead, recoverFinish},
	} {
		got, ri := d.planRecovery(tc.lvs, tc.lvs[tc.check], tc.boot, tc.alive)
		if got != tc.want {
			t.Errorf("%s: plan %v, want %v", tc.what, got, tc.want)
		}
		want := replaceIntent{tag: tag, srcUUID: "SRC-uuid", bootID: boot, owner: owner, target: "b", dstUUID: "DST-uuid"}
		switch {
		case slices.Contains(tc.lvs[tc.check].Tags, oldTag):
			want.tag, want.owner, want.dstUUID = oldTag, proc.ID{Pid: 4242}, ""
		case slices.Contains(tc.lvs[tc.check].Tags, noDstTag):
			want.tag, want.dstUUID = noDstTag, ""
		}
		if got != recoverNone && got != recoverUnknown && got != recoverWait && ri != want {
			t.Errorf("%s: intent %+v, want %+v", tc.what, ri, want)
		}
	}
}

func TestIntentRoundTrip(t *testing.T) {
	ri := replaceIntent{srcUUID: "lpsuZ0-KD0q-F2fc-C5u1-F831-eNsD-0Refia", bootID: "b-1", owner: proc.ID{Pid: 7, Start: 123456},
		target: "web+20disk", dstUUID: "Xq3sT1-aB2c-D3e4-F5g6-H7i8-J9k0-L1m2N3"}
	ri.tag = ri.encode()
	if err := checkTag(ri.tag); err != nil {
		t.Fatalf("intent %q is not a valid LVM tag: %v", ri.tag, err)
	}
	got, ok := intentOf(LV{Tags: []string{"volfs", "volfs.size=1", ri.tag}})
	if !ok || got != ri {
		t.Fatalf("intentOf = %+v, %v; want %+v", got, ok, ri)
	}
}

// On a VG shared between hosts an intent written under another boot ID is
// another host's, whose server may be running it, and on a tagged mount an
// intent on an LV without its tag is another mount's: both left alone.
func TestPlanRecoveryNotOurs(t *testing.T) {
	d := &Driver{cfg: Config{VG: "vg0"}, tag: DefaultTag, log: slog.New(slog.DiscardHandler), shared: &sharedVG{}}
	owner := proc.ID{Pid: 4242, Start: 99}
	tag := replaceIntent{srcUUID: "SRC-uuid", bootID: "host2-boot", owner: owner, target: "b"}.encode()
	aside := "+2Fvolfs-aside-0a1b2c3d"
	lvs := map[string]LV{
		"a":   {Name: "a", UUID: "SRC-uuid", Tags: []string{DefaultTag}},
		aside: {Name: aside, UUID: "DST-uuid", Tags: []string{DefaultTag, tag}},
	}
	if got, _ := d.planRecovery(lvs, lvs[aside], "host1-boot", func(proc.ID) bool { return false }); got != recoverWait {
		t.Errorf("another host's replace intent on a shared VG: plan %v, want wait", got)
	}
	d.shared = nil
	if got, _ := d.planRecovery(lvs, lvs[aside], "host1-boot", func(proc.ID) bool { return false }); got != recoverUndo {
		t.Errorf("an intent of an earlier boot on a VG of this host only: plan %v, want undo", got)
	}
	d.cfg.Tag = "volfs.mount=mine"
	if got, _ := d.planRecovery(lvs, lvs[aside], "host1-boot", func(proc.ID) bool { return false }); got != recoverWait {
		t.Errorf("an intent on an LV without this mount's tag: plan %v, want wait", got)
	}
}

// FuzzIntents decodes arbitrary replace and rollback intent tags: no
// panic; a decoded intent is its tag, and encodes to a tag that decodes
// to the same intent; an intent with a missing field is refused.
func FuzzIntents(f *testing.F) {
	for _, s := range []string{
		"volfs-replace=lpsuZ0-KD0q:b-1:7:123456:web+20disk", "volfs-replace=u:b:7:web", "volfs-replace=u:b:0:1:web",
		"volfs-replace=u:b:-7:1:web", "volfs-replace=:b:7:1:web", "volfs-replace=u:b:7:1:",
		"volfs-rollback=b-1:7:1234567:+2Fvolfs-snap-0011223344556677:web+20disk", "volfs-rollback=b:7:1::web",
		"volfs-rollback=b:+7:01:s:t", "volfs-rollback=b:7:18446744073709551616:s:t",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tag string) {
		lv := LV{Tags: []string{"volfs.size=1", tag}}
		if ri, ok := intentOf(lv); ok {
			if ri.tag != tag || ri.srcUUID == "" || ri.target == "" || ri.owner.Pid <= 0 {
				t.Fatalf("intentOf(%q) = %+v", tag, ri)
			}
			again, ok := intentOf(LV{Tags: []string{ri.encode()}})
			again.tag = ri.tag
			if !ok || again != ri {
				t.Fatalf("%q: %+v, encoded %q: %+v %v", tag, ri, ri.encode(), again, ok)
			}
		}
		if ri, ok := rollbackIntentOf(lv); ok {
			if ri.tag != tag || ri.snapLV == "" || ri.target == "" || ri.owner.Pid <= 0 {
				t.Fatalf("rollbackIntentOf(%q) = %+v", tag, ri)
			}
			again, ok := rollbackIntentOf(LV{Tags: []string{ri.encode()}})
			again.tag = ri.tag
			if !ok || again != ri {
				t.Fatalf("%q: %+v, encoded %q: %+v %v", tag, ri, ri.encode(), again, ok)
			}
		}
	})
}
