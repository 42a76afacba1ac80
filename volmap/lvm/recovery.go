package lvm

import (
	"context"
	"log/slog"
	"maps"
	"slices"

	"github.com/volfs/volfs/internal/proc"
)

// recoveryAction is what the recovery at mount does with one LV left by a
// multi-step change (a rename over an existing file, a snapshot rollback).
type recoveryAction int

const (
	recoverNone      recoveryAction = iota // not a leftover
	recoverDropTag                         // an intent on an LV never moved aside (or already moved back): delete the tag
	recoverUndo                            // not taken effect: rename the aside LV back to the target name, delete the tag
	recoverFinish                          // taken effect: remove the aside LV
	recoverWait                            // the process that wrote the intent still runs
	recoverStuck                           // the target name is held by an unrelated LV: leave it, tell the operator
	recoverUnknown                         // an aside LV without an intent (older volfs): leave it, tell the operator
	recoverRemoveNew                       // rollback only: an incomplete new LV holds the name: remove it, then undo
)

func (a recoveryAction) String() string {
	return [...]string{"none", "drop-tag", "undo", "finish", "wait", "stuck", "unknown", "remove-new-then-undo"}[a]
}

// intent is what recovery needs of a decoded intent tag.
type intent struct {
	tag    string  // the tag itself, to delete it
	owner  proc.ID // the process that wrote it
	target string  // the LV name the aside LV must get back if undone
	attrs  []any   // log attributes naming what the change involved
}

// recovery is one kind of change that recovery finishes or undoes: plan
// decides for each LV from a listing of the whole VG, and says[action]
// is what the log says about it (for Unknown, Wait and Stuck: what the
// operator should know or do).
type recovery struct {
	what string // "a rename over an existing file", for the error log
	plan func(lvs map[string]LV, lv LV, boot string, alive func(proc.ID) bool) (recoveryAction, intent)
	says map[recoveryAction]string
	// finishing is the label remove gives the aside LV's file.
	finishing string
}

// recover finishes or undoes the changes of one kind that a crash
// interrupted, logging what it did and naming the LVs. Runs in New, before
// the mount serves. It reports whether it changed anything.
func (d *Driver) recover(ctx context.Context, l *listing, r recovery) bool {
	boot := bootID()
	changed := false
	for _, name := range slices.Sorted(maps.Keys(l.lvs)) {
		lv := l.lvs[name]
		action, it := r.plan(l.lvs, lv, boot, ownerRunning)
		if action == recoverNone {
			continue
		}
		log := d.log.With(slog.String("lv", name), slog.String("action", action.String()))
		switch action {
		case recoverUnknown:
			log.Error(r.says[action], slog.Any("tags", lv.Tags))
			continue
		case recoverWait:
			log.Warn(r.says[action], append(it.attrs, slog.Int("pid", it.owner.Pid))...)
			continue
		case recoverStuck:
			log.Error(r.says[action], append(it.attrs, slog.String("holder_uuid", l.lvs[it.target].UUID))...)
			continue
		}
		log = log.With(it.attrs...)
		changed = true
		var err error
		switch action {
		case recoverDropTag:
			_, err = d.lvm.Run(ctx, "lvchange", "--deltag", it.tag, d.cfg.VG+"/"+name)
		case recoverRemoveNew:
			if _, err = d.lvm.Run(ctx, "lvremove", d.cfg.VG+"/"+it.target); err != nil {
				break
			}
			log.Info(r.says[recoverRemoveNew])
			fallthrough
		case recoverUndo:
			action = recoverUndo
			if err = d.rename(ctx, name, it.target); err == nil {
				_, err = d.lvm.Run(ctx, "lvchange", "--deltag", it.tag, d.cfg.VG+"/"+it.target)
			}
		case recoverFinish:
			err = d.remove(ctx, it.target+" "+r.finishing, name)
		}
		if err != nil {
			log.Error("could not recover "+r.what+"; volfs retries at its next start", slog.Any("err", err))
			continue
		}
		log.Info(r.says[action])
	}
	return changed
}
