package lvm

import (
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/volfs/volfs/internal/proc"
	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// rollbackTag is the intent a Rollback writes on the image's LV before it
// moves it aside: "volfs-rollback=BOOTID:PID:START:SNAPLV:TARGET". It
// names the process doing the rollback (boot, pid and the pid's start
// time: a mount started while another server rolls back leaves it alone,
// and a later process that reuses the pid is not taken for it), the
// snapshot's LV (for the log) and the image's LV name, which the aside LV
// must get back if the rollback did not take effect (LV names have no
// ':'). Like replaceTag it is outside meta's "volfs." namespace.
const rollbackTag = "volfs-rollback="

// rollbackIntent is a decoded rollbackTag.
type rollbackIntent struct {
	tag    string // the tag itself, to delete it
	bootID string
	owner  proc.ID
	snapLV string // the snapshot's LV name
	target string // the image's LV name
}

func (ri rollbackIntent) encode() string {
	return rollbackTag + ri.bootID + ":" + strconv.Itoa(ri.owner.Pid) + ":" +
		strconv.FormatUint(ri.owner.Start, 10) + ":" + ri.snapLV + ":" + ri.target
}

// rollbackIntentOf returns the rollback intent recorded on lv, if any.
func rollbackIntentOf(lv LV) (rollbackIntent, bool) {
	for _, t := range lv.Tags {
		v, ok := strings.CutPrefix(t, rollbackTag)
		if !ok {
			continue
		}
		f := strings.Split(v, ":")
		if len(f) != 5 || f[3] == "" || f[4] == "" {
			continue
		}
		owner, ok := parseOwner(f[1], f[2])
		if !ok {
			continue
		}
		return rollbackIntent{tag: t, bootID: f[0], owner: owner, snapLV: f[3], target: f[4]}, true
	}
	return rollbackIntent{}, false
}

// rollbackKill is the test hook of the guest tests: when the environment
// has VOLFS_TEST_ROLLBACK_KILL=N, the server kills itself (SIGKILL) at
// Rollback's step N, as a crash there would (see injectRollbackFault).
var rollbackKill = os.Getenv("VOLFS_TEST_ROLLBACK_KILL")

func killAtRollbackStep(step int) {
	if rollbackKill != "" && rollbackKill == strconv.Itoa(step) {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}

// planRollbackRecovery decides what to do with lv after a Rollback that
// may have been interrupted, from a listing of the whole VG (the states
// and what each becomes are in TestPlanRollbackRecovery). boot is this
// machine's boot ID; alive tells whether a process of this boot runs.
//
// Whether the rollback took effect is read from the LV under the image's
// name: the rolled-back LV carries the mount tag and the image's identity
// (volfs.id), given by the same lvcreate, so it has both or is not there.
func (d *Driver) planRollbackRecovery(lvs map[string]LV, lv LV, boot string, alive func(proc.ID) bool) (recoveryAction, rollbackIntent) {
	asidePrefix, _ := volmap.HiddenName(rollbackLabel)
	isAside := strings.HasPrefix(lv.Name, asidePrefix)
	ri, ok := rollbackIntentOf(lv)
	switch {
	case !ok && isAside && slices.Contains(lv.Tags, d.tag):
		return recoverUnknown, ri
	case !ok:
		return recoverNone, ri
	case d.notOurs(lv, ri.bootID, boot), ownerLive(ri.owner, ri.bootID, boot, alive):
		return recoverWait, ri
	case !isAside:
		return recoverDropTag, ri
	}
	holder, taken := lvs[ri.target]
	if !taken {
		return recoverUndo, ri
	}
	identity := d.volume(lv, "").Identity()
	ha, _, err := meta.DecodeTags(holder.Tags)
	switch {
	case err != nil || ha.ID != identity:
		return recoverStuck, ri
	case slices.Contains(holder.Tags, d.tag):
		return recoverFinish, ri
	default:
		return recoverRemoveNew, ri
	}
}

// rollbackRecovery finishes or undoes the rollbacks that a crash
// interrupted (see Rollback).
func (d *Driver) rollbackRecovery() recovery {
	return recovery{
		what: "an interrupted snapshot rollback",
		plan: func(lvs map[string]LV, lv LV, boot string, alive func(proc.ID) bool) (recoveryAction, intent) {
			a, ri := d.planRollbackRecovery(lvs, lv, boot, alive)
			return a, intent{tag: ri.tag, owner: ri.owner, target: ri.target,
				attrs: []any{slog.String("image_lv", ri.target), slog.String("snapshot_lv", ri.snapLV)}}
		},
		says: map[recoveryAction]string{
			recoverUnknown: "an interrupted snapshot rollback of an older volfs left an image's LV under a hidden name, " +
				"without a record of its name: if a file has the same inode number (the rollback took effect), remove " +
				"this LV with lvremove; otherwise give it back its name with lvrename VG LV NAME",
			recoverWait: "a snapshot rollback is in progress in another volfs process; leaving it alone",
			recoverStuck: "interrupted snapshot rollback cannot be undone: the image's LV name is taken by an LV that " +
				"is not the rolled-back image; rename or remove one of them with lvrename/lvremove",
			recoverDropTag:   "a snapshot rollback was interrupted before it changed anything; removed its record",
			recoverRemoveNew: "removed the incomplete LV an interrupted snapshot rollback had created under the image's name",
			recoverUndo: "undid a snapshot rollback interrupted before it took effect: the image is back under " +
				"its LV name with its data from before the rollback",
			recoverFinish: "finished a snapshot rollback interrupted after it took effect: removed the image's LV " +
				"from before the rollback",
		},
		finishing: "(before rollback)",
	}
}
