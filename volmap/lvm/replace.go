package lvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/volfs/volfs/internal/proc"
	"github.com/volfs/volfs/volmap"
)

// replaceTag is the intent a Replace writes on the target LV before it
// moves it aside: "volfs-replace=SRCUUID:BOOTID:PID:START:TARGET:DSTUUID".
// It names the source LV (by UUID, which survives renames), the process
// doing the replace (so that a mount started while another server is
// renaming does not undo its work; START, its start time, tells it from a
// later process that reuses the pid), the target's LV name (LV names have
// no ':') and the target's UUID (the tag goes on by name: an LV another
// tool put under the target's name just before carries it, and is never
// removed for it). Intents of older volfs have no DSTUUID, the oldest no
// START ("SRCUUID:BOOTID:PID:TARGET"): their pid alone is checked.
// It is outside meta's "volfs." namespace: attribute decoding and
// SetAttrs never see or drop it.
const replaceTag = "volfs-replace="

// replaceIntent is a decoded replaceTag.
type replaceIntent struct {
	tag     string // the tag itself, to delete it
	srcUUID string
	bootID  string
	owner   proc.ID // the replacing process; Start 0 in an older intent
	target  string  // the target's LV name
	dstUUID string  // the target's UUID; empty in an older intent
}

func (ri replaceIntent) encode() string {
	return replaceTag + ri.srcUUID + ":" + ri.bootID + ":" + strconv.Itoa(ri.owner.Pid) + ":" +
		strconv.FormatUint(ri.owner.Start, 10) + ":" + ri.target + ":" + ri.dstUUID
}

// intentOf returns the replace intent recorded on lv, if any.
func intentOf(lv LV) (replaceIntent, bool) {
	for _, t := range lv.Tags {
		v, ok := strings.CutPrefix(t, replaceTag)
		if !ok {
			continue
		}
		f := strings.Split(v, ":")
		switch len(f) {
		case 4: // older volfs: no start time, no target UUID
			f = []string{f[0], f[1], f[2], "0", f[3], ""}
		case 5: // no target UUID
			f = append(f, "")
		}
		if len(f) != 6 || f[0] == "" || f[4] == "" {
			continue
		}
		owner, ok := parseOwner(f[2], f[3])
		if !ok {
			continue
		}
		return replaceIntent{tag: t, srcUUID: f[0], bootID: f[1], owner: owner, target: f[4], dstUUID: f[5]}, true
	}
	return replaceIntent{}, false
}

// parseOwner reads the PID and START fields of an intent (START "0": not
// recorded).
func parseOwner(pid, start string) (proc.ID, bool) {
	p, err1 := strconv.Atoi(pid)
	s, err2 := strconv.ParseUint(start, 10, 64)
	if err1 != nil || err2 != nil || p <= 0 {
		return proc.ID{}, false
	}
	return proc.ID{Pid: p, Start: s}, true
}

// intentOwner returns this process's identity for an intent. Without a start
// time (no /proc) the intent records 0, and only its pid is checked.
func intentOwner() proc.ID {
	if id, err := proc.Self(); err == nil {
		return id
	}
	return proc.ID{Pid: os.Getpid()}
}

// ownerRunning reports whether the process that wrote an intent still
// runs: same pid and same start time, so that a later process that got
// the pid (a busy host, a container) is not taken for it. An intent of an
// older volfs has no start time: its pid alone is checked.
func ownerRunning(id proc.ID) bool {
	if id.Start == 0 {
		return processAlive(id.Pid)
	}
	return id.Running()
}

// ownerLive reports whether the intent of owner, written during boot,
// belongs to another process that still runs, and so must be left alone.
// An intent from another boot or of this process is never live.
func ownerLive(owner proc.ID, boot, thisBoot string, alive func(proc.ID) bool) bool {
	return boot != "" && boot == thisBoot && owner.Pid != os.Getpid() && alive(owner)
}

// notOurs reports whether an intent on lv belongs to another server than
// one of this mount on this machine could have been: on a mount with
// --tag, an LV without that tag (another mount of the VG, with another
// tag, may be running it now or recover it itself; an untagged mount holds
// the VG exclusively), or, on a VG shared between hosts, an intent written
// under another boot ID (another host, whose server may be running it
// now). Such intents are left alone.
func (d *Driver) notOurs(lv LV, intentBoot, thisBoot string) bool {
	return (d.cfg.Tag != "" && !slices.Contains(lv.Tags, d.cfg.Tag)) || (d.shared != nil && intentBoot != thisBoot)
}

// bootID identifies this boot of this machine (empty if unknown).
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// processAlive reports whether pid runs and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// Replace renames oldName to newName, replacing the file newName if it
// exists (rename(2) over an existing file). lvrename cannot overwrite, so:
//
//  1. the target LV gets a replaceTag naming the source LV's UUID and the
//     target's name (the intent);
//  2. the target LV is renamed aside, to a hidden name (volmap.HiddenName:
//     "+2Fvolfs-aside-XXXXXXXX", never shown as a file);
//  3. oldName's LV is renamed to newName;
//  4. the aside LV is removed.
//
// Before step 1 both LVs are read again and must still be the LVs the
// listing gave under those names (verifyBoth), and before step 4 the
// renames are checked (swapped): lvrename acts by name, and an LV another
// tool put under either name meanwhile is never removed. From step 1 on
// the steps run to their end even if the request is withdrawn.
//
// Every step is one LVM metadata commit, durable when the command returns.
// A failed step undoes the earlier ones, so a failed Replace leaves both
// files as they were. A crash at any point is finished or undone by the
// next New (recoverReplace): before step 3 completed, the target goes back
// to its name (old names, old data); after, the aside LV is removed (the
// rename took effect). The rename is atomic as rename(2) on ext4 is: after
// a crash, newName is the old or the new file, never missing.
func (d *Driver) Replace(ctx context.Context, oldName, newName string) error {
	_, err := d.replace(ctx, oldName, newName, false)
	return err
}

// ReplaceDetach is Replace over a target that this process has open: the
// target is renamed to a hidden "+2Fvolfs-deleted-…" name (as Detach
// does) instead of aside, and is not removed: the token is that name, for
// Purge at the last close. Step 4 removes the intent instead, so that a
// crash later (the file still open) purges the detached LV whatever
// became of the name since. It fails with ErrInUse, changing nothing,
// when a process outside volfs holds the target (it could not be purged).
func (d *Driver) ReplaceDetach(ctx context.Context, oldName, newName string) (string, error) {
	return d.replace(ctx, oldName, newName, true)
}

func (d *Driver) replace(ctx context.Context, oldName, newName string, detach bool) (token string, err error) {
	dstLV, err := d.newLVName(newName)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Like Rename, a replace that took effect patches the listing: the
	// source LV, as lvs read it right before, under the target's name.
	// Otherwise (an error, a plain rename, a detached target, which
	// lives on under a hidden name, or LVs depending on either) the
	// listing is dropped.
	var moved, replaced LV
	defer func() {
		if err != nil || detach || moved.Name == "" || d.hasDependents(moved) || d.hasDependents(replaced) {
			d.invalidate()
			return
		}
		to := moved
		to.Name = replaced.Name
		if to.DMPath != "" {
			to.DMPath = d.devPath(to.Name)
		}
		d.patchOwn(ownLV{lv: LV{Name: moved.Name}, gone: true}, ownLV{lv: to})
		d.dropSpace()
	}()
	src, err := d.file(ctx, oldName)
	if err != nil {
		return "", err
	}
	l, err := d.listing(ctx)
	if err != nil {
		return "", err
	}
	dst, exists := l.lvs[dstLV]
	if !exists {
		// The target is gone since the caller looked: a plain rename.
		if src, err = d.verifyIdentity(ctx, oldName, src); err != nil {
			return "", fmt.Errorf("rename %s: %w", oldName, err)
		}
		if err := d.busyElsewhere(ctx, src, "rename "+oldName); err != nil {
			return "", err
		}
		if err := d.rename(ctx, src.Name, dstLV); err != nil {
			return "", err
		}
		moved, replaced = src, LV{Name: dstLV}
		return "", nil
	}
	if dst.UUID == src.UUID {
		return "", nil
	}
	if _, ok := d.fileName(dst); !ok {
		return "", fmt.Errorf("replace %s: LV %s/%s exists and is not a file of this mount: %w",
			newName, d.cfg.VG, dstLV, volmap.ErrExists)
	}
	if err := d.busyElsewhere(ctx, src, "rename "+oldName); err != nil {
		return "", err
	}
	if err := d.busyElsewhere(ctx, dst, "replace "+newName); err != nil {
		return "", err
	}
	label, rnd := asideLabel, make([]byte, 4)
	if detach {
		label, rnd = deletedLabel, make([]byte, 8)
		if who := otherHolders(d.devPath(dst.Name)); len(who) > 0 {
			return "", fmt.Errorf("replace %s (%s/%s): the volume is open outside volfs: %s: %w",
				newName, d.cfg.VG, dst.Name, strings.Join(who, "; "), volmap.ErrInUse)
		}
	}
	_, _ = rand.Read(rnd)
	aside, err := volmap.HiddenName(label + hex.EncodeToString(rnd))
	if err == nil {
		err = volmap.CheckDMName(d.cfg.VG, aside)
	}
	if err != nil {
		return "", fmt.Errorf("replace %s: temporary name: %w", newName, err)
	}
	// Both LVs are renamed, and the target removed, by name: right
	// before the first step each must still be the LV the listing says
	// (see verifyIdentity), and the renames are checked before the
	// removal (swapped).
	if src, dst, err = d.verifyBoth(ctx, oldName, src, newName, dst); err != nil {
		return "", err
	}
	if _, ok := d.fileName(dst); !ok {
		return "", fmt.Errorf("replace %s: LV %s/%s is no longer a file of this mount: %w",
			newName, d.cfg.VG, dstLV, volmap.ErrExists)
	}
	// From here on the steps and their undo run to their end even if the
	// request is withdrawn (FUSE_INTERRUPT, a killed mv): a step that
	// committed is reported as failed when its context ends, and undoing
	// the renames after a removal that did take effect would leave the
	// target's name without a volume.
	steps, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*undoTimeout)
	defer cancel()
	// Each undo step has time of its own, whatever the steps before took.
	var undoCancels []context.CancelFunc
	defer func() {
		for _, c := range undoCancels {
			c()
		}
	}()
	undo := func() context.Context {
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		undoCancels = append(undoCancels, cancel)
		return c
	}

	intent := replaceIntent{srcUUID: src.UUID, bootID: bootID(), owner: intentOwner(), target: dst.Name, dstUUID: dst.UUID}
	intent.tag = intent.encode()
	if _, err := d.lvm.Run(steps, "lvchange", "--addtag", intent.tag, d.cfg.VG+"/"+dst.Name); err != nil {
		return "", errors.Join(fmt.Errorf("replace %s: record the rename on %s/%s: %w", newName, d.cfg.VG, dst.Name, err),
			d.dropIntent(undo(), dst.Name, intent.tag))
	}
	if err := d.rename(steps, dst.Name, aside); err != nil {
		return "", errors.Join(fmt.Errorf("replace %s: move target aside: %w", newName, err),
			d.dropIntent(undo(), dst.Name, intent.tag))
	}
	if err := d.rename(steps, src.Name, dst.Name); err != nil {
		return "", errors.Join(fmt.Errorf("replace %s: %w", newName, err),
			d.undoStep(undo(), aside, dst.Name), d.dropIntent(undo(), dst.Name, intent.tag))
	}
	if err := d.swapped(steps, src, dst, aside); err != nil {
		return "", errors.Join(fmt.Errorf("replace %s: %w", newName, err),
			d.undoStep(undo(), dst.Name, src.Name), d.undoStep(undo(), aside, dst.Name),
			d.dropIntent(undo(), dst.Name, intent.tag))
	}
	if detach {
		// The rename took effect; the detached LV must no longer
		// look like the target of an unfinished one.
		if _, err := d.lvm.Run(steps, "lvchange", "--deltag", intent.tag, d.cfg.VG+"/"+aside); err != nil {
			d.log.Warn("could not remove the record of a finished rename from the replaced LV; it is removed "+
				"with the LV at its last close", slog.String("lv", aside), slog.Any("err", err))
		}
		return aside, nil
	}
	if err := d.remove(steps, newName+" (replaced)", aside); err != nil {
		return "", errors.Join(fmt.Errorf("replace %s: remove the replaced volume: %w", newName, err),
			d.undoStep(undo(), dst.Name, src.Name), d.undoStep(undo(), aside, dst.Name),
			d.dropIntent(undo(), dst.Name, intent.tag))
	}
	moved, replaced = src, dst
	return "", nil
}

// verifyBoth is verifyIdentity of a replace's source and target, with one
// lvs of the two; when that does not confirm both, each is read on its own
// for the error.
func (d *Driver) verifyBoth(ctx context.Context, oldName string, src LV, newName string, dst LV) (LV, LV, error) {
	if now, err := d.readLVs(ctx, src.Name, dst.Name); err == nil &&
		now[src.Name].UUID == src.UUID && now[dst.Name].UUID == dst.UUID {
		return now[src.Name], now[dst.Name], nil
	}
	s, err := d.verifyIdentity(ctx, oldName, src)
	if err != nil {
		return LV{}, LV{}, fmt.Errorf("rename %s: %w", oldName, err)
	}
	t, err := d.verifyIdentity(ctx, newName, dst)
	if err != nil {
		return LV{}, LV{}, fmt.Errorf("replace %s: %w", newName, err)
	}
	return s, t, nil
}

// swapped checks, before the replaced LV is removed or detached, that the
// renames moved the LVs they were meant to: the target's name holds the
// source and the aside name the target. Another tool that took either
// name between the check before the first step and the rename (an
// lvrename or lvcreate in those milliseconds) would otherwise have its LV
// moved into the target's name, or removed. The aside name is random and
// hidden: no one else takes it afterwards.
func (d *Driver) swapped(ctx context.Context, src, dst LV, aside string) error {
	now, err := d.readLVs(ctx, dst.Name, aside)
	if err != nil {
		return fmt.Errorf("check the renames before removing the replaced volume: %w", err)
	}
	if now[dst.Name].UUID != src.UUID || now[aside].UUID != dst.UUID {
		d.log.Error("a replace renamed an LV that another tool put in place meanwhile; undoing",
			slog.String("lv", dst.Name), slog.String("uuid", now[dst.Name].UUID), slog.String("want_uuid", src.UUID),
			slog.String("aside", aside), slog.String("aside_uuid", now[aside].UUID), slog.String("want_aside_uuid", dst.UUID))
		return fmt.Errorf("LV %s/%s or %s/%s was renamed or recreated by another tool during the replace; both "+
			"renames are undone, nothing was removed: %w", d.cfg.VG, src.Name, d.cfg.VG, dst.Name, volmap.ErrChanged)
	}
	return nil
}

// undoStep renames back during a rollback, logging what it cannot undo.
func (d *Driver) undoStep(ctx context.Context, from, to string) error {
	if err := d.rename(ctx, from, to); err != nil {
		d.log.Error("rollback failed: an LV keeps a temporary name", slog.String("lv", from),
			slog.String("should_be", to), slog.Any("err", err))
		return fmt.Errorf("rollback: %w", err)
	}
	return nil
}

// dropIntent removes a replaceTag from an LV whose replace was undone. A
// tag left behind (the command failed) is harmless: the next New removes
// it from an LV that is not aside.
func (d *Driver) dropIntent(ctx context.Context, lvName, tag string) error {
	if _, err := d.lvm.Run(ctx, "lvchange", "--deltag", tag, d.cfg.VG+"/"+lvName); err != nil {
		if errors.Is(err, volmap.ErrNotFound) {
			return nil
		}
		d.log.Warn("could not remove the record of an undone rename; the next mount removes it",
			slog.String("lv", lvName), slog.String("tag", tag), slog.Any("err", err))
	}
	return nil
}

// planRecovery decides what to do with lv after a replace that may have
// been interrupted, from a listing of the whole VG. boot is this machine's
// boot ID; alive tells whether a process of this boot runs.
func (d *Driver) planRecovery(lvs map[string]LV, lv LV, boot string, alive func(proc.ID) bool) (recoveryAction, replaceIntent) {
	asidePrefix, _ := volmap.HiddenName(asideLabel)
	deletedPrefix, _ := volmap.HiddenName(deletedLabel)
	isAside := strings.HasPrefix(lv.Name, asidePrefix) || strings.HasPrefix(lv.Name, deletedPrefix)
	ri, ok := intentOf(lv)
	switch {
	case !ok && strings.HasPrefix(lv.Name, asidePrefix):
		return recoverUnknown, ri
	case !ok:
		return recoverNone, ri
	case d.notOurs(lv, ri.bootID, boot), ownerLive(ri.owner, ri.bootID, boot, alive):
		return recoverWait, ri
	case !isAside:
		return recoverDropTag, ri
	}
	holder, taken := lvs[ri.target]
	switch {
	case !taken:
		return recoverUndo, ri
	case holder.UUID == ri.srcUUID && (ri.dstUUID == "" || lv.UUID == ri.dstUUID):
		return recoverFinish, ri
	default:
		return recoverStuck, ri
	}
}

// replaceRecovery finishes or undoes the replaces that a crash
// interrupted (see Replace).
func (d *Driver) replaceRecovery() recovery {
	return recovery{
		what: "an interrupted rename over an existing file",
		plan: func(lvs map[string]LV, lv LV, boot string, alive func(proc.ID) bool) (recoveryAction, intent) {
			a, ri := d.planRecovery(lvs, lv, boot, alive)
			return a, intent{tag: ri.tag, owner: ri.owner, target: ri.target,
				attrs: []any{slog.String("target", ri.target), slog.String("source_uuid", ri.srcUUID)}}
		},
		says: map[recoveryAction]string{
			recoverUnknown: "LV left by an interrupted rename over an existing file, without a record of the rename: it is " +
				"either the replaced file's old data (remove it) or a file whose rename did not finish (rename it back)",
			recoverWait: "a rename over an existing file is in progress in another volfs process; leaving it alone",
			recoverStuck: "interrupted rename over an existing file cannot be settled safely: the target name is taken " +
				"by another LV, or the LV set aside is not the file the rename replaced (another tool's); rename or remove " +
				"one of them with lvrename/lvremove",
			recoverDropTag: "a rename over this file was interrupted before it changed anything; removed its record",
			recoverUndo: "undid a rename over an existing file interrupted before the source took the name: " +
				"the replaced file is back",
			recoverFinish: "finished a rename over an existing file interrupted after the source took the name: " +
				"removed the replaced file's LV",
		},
		finishing: "(replaced)",
	}
}
