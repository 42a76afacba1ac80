package lvm

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/proc"
	"github.com/volfs/volfs/meta"
)

// What the next mount does with every state a crashed Rollback of image
// "img" to its snapshot can leave (the LVs as lvs lists them after each
// step), and with states that are not its own.
func TestPlanRollbackRecovery(t *testing.T) {
	d := &Driver{cfg: Config{VG: "vg0"}, tag: DefaultTag, log: slog.New(slog.DiscardHandler)}
	const boot = "6b0f6c35-0cbe-4f2b-9d67-0a3e5c4f1e11"
	owner := proc.ID{Pid: 4242, Start: 777}
	snapLV := "+2Fvolfs-snap-0011223344556677"
	intent := rollbackIntent{bootID: boot, owner: owner, snapLV: snapLV, target: "img"}
	tag := intent.encode()
	aside := "+2Fvolfs-rollback-8899aabbccddeeff"
	img := LV{Name: "img", UUID: "IMG-uuid", Tags: []string{DefaultTag, idTag("img-identity"), "volfs.mode=0644"}}
	noID := LV{Name: "img", UUID: "IMG-uuid", Tags: []string{DefaultTag}} // made outside volfs: identity is the UUID
	snap := LV{Name: snapLV, UUID: "SNAP-uuid", Tags: []string{DefaultTag}}
	// The LV step 2 creates: a new UUID, the mount tag and the identity.
	rolled := LV{Name: "img", UUID: "NEW-uuid", Tags: []string{DefaultTag, idTag("img-identity"), "volfs.mode=0600"}}
	rolledNoID := LV{Name: "img", UUID: "NEW-uuid", Tags: []string{DefaultTag, idTag("IMG-uuid")}}
	partial := LV{Name: "img", UUID: "NEW-uuid", Tags: []string{idTag("img-identity")}}
	other := LV{Name: "img", UUID: "OTHER-uuid", Tags: []string{DefaultTag, idTag("other")}}
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
	dead := func(proc.ID) bool { return false }
	alive := func(id proc.ID) bool { return id == owner }
	recycled := func(id proc.ID) bool { return id.Pid == owner.Pid && id.Start != owner.Start }
	for _, tc := range []struct {
		what  string
		lvs   map[string]LV
		check string // the LV planned for
		boot  string
		alive func(proc.ID) bool
		want  recoveryAction
	}{
		{"before step 0: nothing to do", vg(img, snap), "img", boot, dead, recoverNone},
		{"after step 0 (intent on img, not moved)", vg(tagged(img, "img", tag), snap), "img", boot, dead, recoverDropTag},
		{"after step 1 (img aside, name free)", vg(tagged(img, aside, tag), snap), aside, boot, dead, recoverUndo},
		{"after step 2 (the snapshot's copy has the name)", vg(tagged(img, aside, tag), rolled, snap), aside, boot, dead, recoverFinish},
		{"after step 2, image made outside volfs", vg(tagged(noID, aside, tag), rolledNoID, snap), aside, boot, dead, recoverFinish},
		{"after step 2, new LV without the mount tag", vg(tagged(img, aside, tag), partial, snap), aside, boot, dead, recoverRemoveNew},
		{"undo interrupted between rename back and deltag", vg(tagged(img, "img", tag), snap), "img", boot, dead, recoverDropTag},
		{"the rolling-back server still runs", vg(tagged(img, aside, tag), snap), aside, boot, alive, recoverWait},
		{"pid reused by a later process", vg(tagged(img, aside, tag), snap), aside, boot, recycled, recoverUndo},
		{"same process after a reboot: not the same", vg(tagged(img, aside, tag), rolled, snap), aside, "other-boot", alive, recoverFinish},
		{"name taken by another LV since", vg(tagged(img, aside, tag), other, snap), aside, boot, dead, recoverStuck},
		{"aside LV of an older volfs, no intent", vg(tagged(img, aside), snap), aside, boot, dead, recoverUnknown},
		{"hidden LV of someone else", vg(LV{Name: aside, UUID: "X"}), aside, boot, dead, recoverNone},
		{"malformed intent is no intent", vg(tagged(img, "img", "volfs-rollback=x:y"), snap), "img", boot, dead, recoverNone},
		{"a replace intent is not a rollback", vg(tagged(img, "img", "volfs-replace=S:"+boot+":1:2:img")), "img", boot, dead, recoverNone},
	} {
		got, ri := d.planRollbackRecovery(tc.lvs, tc.lvs[tc.check], tc.boot, tc.alive)
		if got != tc.want {
			t.Errorf("%s: plan %v, want %v", tc.what, got, tc.want)
		}
		if got != recoverNone && got != recoverUnknown && ri != (rollbackIntent{tag: tag, bootID: boot, owner: owner, snapLV: snapLV, target: "img"}) {
			t.Errorf("%s: intent %+v", tc.what, ri)
		}
	}
}

// idTag is the tag that records identity id.
func idTag(id string) string {
	for _, t := range meta.EncodeTags(meta.Attrs{ID: id, Size: -1}) {
		if strings.HasPrefix(t, meta.TagPrefix+"id=") {
			return t
		}
	}
	panic("no id tag")
}

func TestRollbackIntentRoundTrip(t *testing.T) {
	ri := rollbackIntent{bootID: "b-1", owner: proc.ID{Pid: 7, Start: 1234567}, snapLV: "+2Fvolfs-snap-0011223344556677", target: "web+20disk"}
	ri.tag = ri.encode()
	if err := checkTag(ri.tag); err != nil {
		t.Fatalf("intent %q is not a valid LVM tag: %v", ri.tag, err)
	}
	got, ok := rollbackIntentOf(LV{Tags: []string{"volfs", "volfs.size=1", ri.tag}})
	if !ok || got != ri {
		t.Fatalf("rollbackIntentOf = %+v, %v; want %+v", got, ok, ri)
	}
}
