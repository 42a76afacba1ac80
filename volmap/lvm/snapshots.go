package lvm

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// Snapshots are thin snapshots of the image's LV under a hidden LV name
// ("+2Fvolfs-snap-" and 16 random hex digits), never a file (DecodeName
// refuses it). Which image and which name are tags, written by the same
// lvcreate (LVM copies no tags to a snapshot):
//
//	volfs.snap.of=B64(identity of the image)  the image's volfs.id, or its LV UUID
//	volfs.snap.name=B64(snapshot name)
//	the mount tag, and the image's attribute tags at the time (no volfs.id)
//
// Naming by identity rather than by LV name means `mv` of an image needs
// no change to its snapshots, a snapshot may have any file name (no LV
// name rules, no length limit from the VG name), and renaming a snapshot
// is a tag change, not an lvrename (which would suspend nothing but costs
// the same). The cost: `lvs` alone does not say which snapshot is which;
// `volfs snapshot list` prints the LV names.
//
// Only thin images get snapshots: a thick (COW) snapshot whose COW fills
// is invalidated, and one as large as its origin doubles the space; volfs
// refuses and names --thin-pool instead (as Proxmox does for raw LVs).

// snapLabel starts the hidden LV name of a snapshot.
const snapLabel = "volfs-snap-"

// rollbackLabel names the image LV that Rollback moves aside while the
// snapshot's copy takes its name.
const rollbackLabel = "volfs-rollback-"

// Tag keys (after meta.TagPrefix).
const (
	tagSnapOf   = meta.TagPrefix + "snap.of="
	tagSnapName = meta.TagPrefix + "snap.name="
)

// DefaultPoolLimit is Config.PoolLimit's default, in percent.
const DefaultPoolLimit = 90

var snapB64 = base64.RawURLEncoding

// rollbackFault, when set (tests), is called at each step of Rollback
// (1: intent recorded, before the image moves aside; 2: before the
// lvcreate; 3: before the old LV is removed; 4: after, the rollback done);
// an error fails that step. VOLFS_TEST_ROLLBACK_KILL=N kills the server
// there instead (killAtRollbackStep).
var rollbackFault func(step int) error

func injectRollbackFault(step int) error {
	killAtRollbackStep(step)
	if rollbackFault == nil {
		return nil
	}
	return rollbackFault(step)
}

// snapState counts the opens of each snapshot LV and remembers which ones
// the driver activated, to deactivate them at the last close.
type snapState struct {
	mu        sync.Mutex
	opens     map[string]int
	activated map[string]bool
}

var _ volmap.Snapshotter = (*Driver)(nil)

// CheckSnapshotName applies the rules of a snapshot name: a file name
// (not empty, no '/', no NUL, not "." or "..", at most 255 bytes).
func CheckSnapshotName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%w: %q is not a snapshot name", volmap.ErrInvalidName, name)
	case len(name) > 255:
		return fmt.Errorf("%w: snapshot name %q is longer than 255 bytes", volmap.ErrNameTooLong, name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%w: snapshot name %q contains '/' or NUL", volmap.ErrInvalidName, name)
	}
	return nil
}

func snapTag(prefix, v string) string { return prefix + snapB64.EncodeToString([]byte(v)) }

// snapOf returns the origin identity and name a snapshot LV's tags record.
func (d *Driver) snapOf(lv LV) (origin, name string, ok bool) {
	prefix, _ := volmap.HiddenName(snapLabel)
	if !strings.HasPrefix(lv.Name, prefix) || !slices.Contains(lv.Tags, d.tag) {
		return "", "", false
	}
	var gotO, gotN bool
	for _, t := range lv.Tags {
		if v, found := strings.CutPrefix(t, tagSnapOf); found {
			b, err := snapB64.DecodeString(v)
			origin, gotO = string(b), err == nil
		} else if v, found := strings.CutPrefix(t, tagSnapName); found {
			b, err := snapB64.DecodeString(v)
			name, gotN = string(b), err == nil
		}
	}
	// A name volfs would not give (another tool's tag: "..", a '/') is
	// no snapshot: listed, it would fail the readdir of its directory.
	return origin, name, gotO && gotN && origin != "" && CheckSnapshotName(name) == nil
}

func (d *Driver) snapshot(lv LV, origin, name string) volmap.Snapshot {
	v := d.volume(lv, name)
	v.Attrs.ID = ""
	return volmap.Snapshot{Name: name, Origin: origin, ID: lv.UUID, Created: lv.Created,
		Size: lv.Size, Used: v.Used, Attrs: v.Attrs, Device: d.cfg.VG + "/" + lv.Name}
}

// snapshotsIn lists the snapshots of origin in l.
func (d *Driver) snapshotsIn(l *listing, origin string) []volmap.Snapshot {
	var out []volmap.Snapshot
	for _, lv := range l.lvs {
		if o, n, ok := d.snapOf(lv); ok && o == origin {
			out = append(out, d.snapshot(lv, o, n))
		}
	}
	slices.SortFunc(out, func(a, b volmap.Snapshot) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// Snapshots lists the snapshots of the image whose identity is origin.
func (d *Driver) Snapshots(ctx context.Context, origin string) ([]volmap.Snapshot, error) {
	l, err := d.listing(ctx)
	if err != nil {
		return nil, err
	}
	return d.snapshotsIn(l, origin), nil
}

// snapLV finds the LV of origin's snapshot called name.
func (d *Driver) snapLV(ctx context.Context, origin, name string) (LV, error) {
	l, err := d.listing(ctx)
	if err != nil {
		return LV{}, err
	}
	for _, lv := range l.lvs {
		if o, n, ok := d.snapOf(lv); ok && o == origin && n == name {
			return lv, nil
		}
	}
	return LV{}, fmt.Errorf("no snapshot %q of this image: %w", name, volmap.ErrNotFound)
}

// thinOrigin returns the thin LV of image, or an error that says why a
// snapshot of it is refused.
func (d *Driver) thinOrigin(ctx context.Context, image, what string) (LV, error) {
	lv, err := d.file(ctx, image)
	if err != nil {
		return LV{}, err
	}
	if !lv.Thin() {
		return LV{}, fmt.Errorf("%s of %s: LV %s/%s is %s, not a thin volume; volfs makes only thin snapshots "+
			"and clones (a thick snapshot is invalidated when its copy-on-write space fills): mount with "+
			"--thin-pool POOL so that new images are thin, and copy this one into a new file: %w",
			what, image, d.cfg.VG, lv.Name, lv.SegType, volmap.ErrNotSupported)
	}
	return lv, nil
}

// poolGuard refuses a snapshot or clone while the thin pool is fuller than
// PoolLimit (data or metadata): a full pool fails the writes of every
// thin volume in it, and snapshots make old data stay allocated.
func (d *Driver) poolGuard(ctx context.Context, pool, what string) error {
	limit := d.cfg.PoolLimit
	if limit == 0 {
		limit = DefaultPoolLimit
	}
	out, err := d.lvm.Report(ctx, "lvs", "lv_name,data_percent,metadata_percent", d.cfg.VG+"/"+pool)
	if err != nil {
		return fmt.Errorf("%s: read the use of thin pool %s/%s: %w", what, d.cfg.VG, pool, err)
	}
	rows, err := parseRows(out, "lv")
	if err != nil || len(rows) != 1 {
		return fmt.Errorf("%s: read the use of thin pool %s/%s: %d rows, %v", what, d.cfg.VG, pool, len(rows), err)
	}
	p := rowParser{row: rows[0]}
	data, md := p.percent("data_percent"), p.percent("metadata_percent")
	if data > limit || md > limit {
		return fmt.Errorf("%s refused: thin pool %s/%s is %.1f%% full (data) and %.1f%% (metadata), above the "+
			"limit of %g%% (volfs mount --pool-limit): extend the pool (lvextend -L +SIZE %s/%s, or "+
			"--poolmetadatasize) or delete snapshots: %w",
			what, d.cfg.VG, pool, data, md, limit, d.cfg.VG, pool, volmap.ErrNoSpace)
	}
	return nil
}

func hiddenRandom(label string) (string, error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	return volmap.HiddenName(label + hex.EncodeToString(rnd[:]))
}

// CreateSnapshot takes a read-only thin snapshot of image (activation-skip
// kept: it is activated with -K when opened) with every tag in the same
// lvcreate.
func (d *Driver) CreateSnapshot(ctx context.Context, image, name string, a meta.Attrs) (volmap.Snapshot, error) {
	if err := CheckSnapshotName(name); err != nil {
		return volmap.Snapshot{}, err
	}
	hidden, err := hiddenRandom(snapLabel)
	if err != nil {
		return volmap.Snapshot{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	lv, err := d.thinOrigin(ctx, image, "snapshot")
	if err != nil {
		return volmap.Snapshot{}, err
	}
	if err := d.busyElsewhere(ctx, lv, "snapshot of "+image); err != nil {
		return volmap.Snapshot{}, err
	}
	origin := d.volume(lv, image).Identity()
	if _, err := d.snapLV(ctx, origin, name); err == nil {
		return volmap.Snapshot{}, fmt.Errorf("snapshot %q of %s exists: %w", name, image, volmap.ErrExists)
	}
	if err := d.poolGuard(ctx, lv.Pool, "snapshot of "+image); err != nil {
		return volmap.Snapshot{}, err
	}
	a.ID = ""
	args := []string{"-s", "-n", hidden, "-ky", "-pr", "--addtag", d.tag,
		"--addtag", snapTag(tagSnapOf, origin), "--addtag", snapTag(tagSnapName, name)}
	for _, t := range meta.EncodeTags(a) {
		args = append(args, "--addtag", t)
	}
	args = append(args, d.cfg.VG+"/"+lv.Name)
	_, err = d.lvm.Run(ctx, "lvcreate", args...)
	d.invalidate()
	if err != nil {
		err = fmt.Errorf("snapshot %q of %s (%s/%s): %w", name, image, d.cfg.VG, lv.Name, err)
		if !errors.Is(err, volmap.ErrNoSpace) {
			err = errors.Join(err, d.undoCreate(ctx, hidden))
		}
		return volmap.Snapshot{}, err
	}
	l, err := d.refresh(ctx, d.clock())
	if err != nil {
		return volmap.Snapshot{}, err
	}
	s, ok := l.lvs[hidden]
	if !ok {
		return volmap.Snapshot{}, fmt.Errorf("snapshot %q of %s: LV %s/%s missing after lvcreate", name, image, d.cfg.VG, hidden)
	}
	return d.snapshot(s, origin, name), nil
}

// DeleteSnapshot removes a snapshot's LV.
func (d *Driver) DeleteSnapshot(ctx context.Context, origin, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	lv, err := d.snapLV(ctx, origin, name)
	if err != nil {
		return err
	}
	defer d.invalidate()
	return d.remove(ctx, "snapshot "+name, lv.Name)
}

// RenameSnapshot changes a snapshot's name tag (its LV keeps its name).
func (d *Driver) RenameSnapshot(ctx context.Context, origin, oldName, newName string) error {
	if err := CheckSnapshotName(newName); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	lv, err := d.snapLV(ctx, origin, oldName)
	if err != nil {
		return err
	}
	if oldName == newName {
		return nil
	}
	if _, err := d.snapLV(ctx, origin, newName); err == nil {
		return fmt.Errorf("rename snapshot %q: snapshot %q exists: %w", oldName, newName, volmap.ErrExists)
	}
	defer d.invalidate()
	if _, err := d.lvm.RunTags(ctx, "--deltag", snapTag(tagSnapName, oldName),
		"--addtag", snapTag(tagSnapName, newName), d.cfg.VG+"/"+lv.Name); err != nil {
		return fmt.Errorf("rename snapshot %q to %q (%s/%s): %w", oldName, newName, d.cfg.VG, lv.Name, err)
	}
	return nil
}

// Rollback makes image a writable thin snapshot of its snapshot name, without
// lvconvert --merge (deferred while the origin is open, and it drops
// sibling snapshots' origin link):
//
//  0. the image's LV gets a rollbackTag naming its LV name, the snapshot
//     and this process (the intent);
//  1. the image's LV is renamed aside ("+2Fvolfs-rollback-…");
//  2. lvcreate -s -kn -prw of the snapshot under the image's LV name, with
//     the mount tag and a's tags (a keeps the file's identity);
//  3. the aside LV is removed, and the intent with it.
//
// A failed step undoes the earlier ones. A crash at any point is finished
// or undone by the next New (rollbackRecovery): if the LV under the image's
// name is the rolled-back one (step 2 done), the aside LV is removed;
// otherwise the aside LV gets its name back. After a crash the file has
// its old data or the snapshot's, never neither.
func (d *Driver) Rollback(ctx context.Context, image, name string, a meta.Attrs) error {
	aside, err := hiddenRandom(rollbackLabel)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.invalidate()
	lv, err := d.thinOrigin(ctx, image, "rollback")
	if err != nil {
		return err
	}
	if err := d.busyElsewhere(ctx, lv, "rollback of "+image); err != nil {
		return err
	}
	origin := d.volume(lv, image).Identity()
	snap, err := d.snapLV(ctx, origin, name)
	if err != nil {
		return fmt.Errorf("rollback of %s: %w", image, err)
	}
	if lv.Active {
		if who := otherHolders(d.devPath(lv.Name)); len(who) > 0 {
			return fmt.Errorf("rollback of %s (%s/%s): the volume is open outside volfs: %s; stop what uses it first: %w",
				image, d.cfg.VG, lv.Name, strings.Join(who, "; "), volmap.ErrInUse)
		}
	}
	a.ID = origin // the rolled-back LV is new: its volfs.id keeps the file's identity
	undoCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()

	intent := rollbackIntent{bootID: bootID(), owner: intentOwner(), snapLV: snap.Name, target: lv.Name}
	intent.tag = intent.encode()
	if _, err := d.lvm.Run(ctx, "lvchange", "--addtag", intent.tag, d.cfg.VG+"/"+lv.Name); err != nil {
		return errors.Join(fmt.Errorf("rollback of %s: record the rollback on %s/%s: %w", image, d.cfg.VG, lv.Name, err),
			d.dropIntent(undoCtx, lv.Name, intent.tag))
	}
	err = injectRollbackFault(1)
	if err == nil {
		err = d.rename(ctx, lv.Name, aside)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("rollback of %s: move the image aside: %w", image, err),
			d.dropIntent(undoCtx, lv.Name, intent.tag))
	}
	args := []string{"-s", "-n", lv.Name, "-kn", "-prw", "--addtag", d.tag}
	for _, t := range meta.EncodeTags(a) {
		args = append(args, "--addtag", t)
	}
	args = append(args, d.cfg.VG+"/"+snap.Name)
	err = injectRollbackFault(2)
	if err == nil {
		_, err = d.lvm.Run(ctx, "lvcreate", args...)
	}
	if err != nil {
		err = fmt.Errorf("rollback of %s: copy snapshot %q (%s/%s): %w", image, name, d.cfg.VG, snap.Name, err)
		if errors.Is(err, volmap.ErrExists) {
			// Someone else took the freed name meanwhile: that LV is
			// not ours to remove, and the image cannot take its name
			// back either (the next mount says so, naming both).
			return errors.Join(err, d.undoStep(undoCtx, aside, lv.Name))
		}
		if uerr := errors.Join(d.undoCreate(undoCtx, lv.Name), d.undoStep(undoCtx, aside, lv.Name)); uerr != nil {
			return errors.Join(err, uerr)
		}
		return errors.Join(err, d.dropIntent(undoCtx, lv.Name, intent.tag))
	}
	err = injectRollbackFault(3)
	if err == nil {
		err = d.remove(ctx, image+" (before rollback)", aside)
	}
	if err != nil {
		err = fmt.Errorf("rollback of %s: remove the old volume: %w", image, err)
		_, rerr := d.lvm.Run(undoCtx, "lvremove", d.cfg.VG+"/"+lv.Name)
		if rerr != nil {
			return errors.Join(err, fmt.Errorf("rollback: remove the new %s/%s: %w", d.cfg.VG, lv.Name, rerr))
		}
		if uerr := d.undoStep(undoCtx, aside, lv.Name); uerr != nil {
			return errors.Join(err, uerr)
		}
		return errors.Join(err, d.dropIntent(undoCtx, lv.Name, intent.tag))
	}
	_ = injectRollbackFault(4)
	d.log.Info("rolled back", slog.String("lv", lv.Name), slog.String("snapshot", name),
		slog.String("snapshot_lv", snap.Name))
	return nil
}

// Clone makes dst a writable thin snapshot (-kn -prw) of image or of its
// snapshot snap: instant, sharing the pool's blocks until written.
func (d *Driver) Clone(ctx context.Context, image, snap, dst string, a meta.Attrs) (volmap.Volume, error) {
	dstLV, err := d.newLVName(dst)
	if err != nil {
		return volmap.Volume{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	src, err := d.thinOrigin(ctx, image, "clone")
	if err != nil {
		return volmap.Volume{}, err
	}
	if snap != "" {
		if src, err = d.snapLV(ctx, d.volume(src, image).Identity(), snap); err != nil {
			return volmap.Volume{}, fmt.Errorf("clone of %s: %w", image, err)
		}
	}
	l, err := d.listing(ctx)
	if err != nil {
		return volmap.Volume{}, err
	}
	if _, ok := l.lvs[dstLV]; ok {
		return volmap.Volume{}, fmt.Errorf("clone to %s: LV %s/%s exists: %w", dst, d.cfg.VG, dstLV, volmap.ErrExists)
	}
	if err := d.poolGuard(ctx, src.Pool, "clone of "+image); err != nil {
		return volmap.Volume{}, err
	}
	args := []string{"-s", "-n", dstLV, "-kn", "-prw", "--addtag", d.tag}
	for _, t := range meta.EncodeTags(a) {
		args = append(args, "--addtag", t)
	}
	args = append(args, d.cfg.VG+"/"+src.Name)
	_, err = d.lvm.Run(ctx, "lvcreate", args...)
	d.invalidate()
	if err != nil {
		err = fmt.Errorf("clone %s to %s (%s/%s): %w", image, dst, d.cfg.VG, dstLV, err)
		if !errors.Is(err, volmap.ErrExists) && !errors.Is(err, volmap.ErrNoSpace) {
			err = errors.Join(err, d.undoCreate(ctx, dstLV))
		}
		return volmap.Volume{}, err
	}
	l, err = d.refresh(ctx, d.clock())
	if err != nil {
		return volmap.Volume{}, err
	}
	lv, ok := l.lvs[dstLV]
	if _, isFile := d.fileName(lv); !ok || !isFile {
		return volmap.Volume{}, errors.Join(fmt.Errorf("clone to %s: LV %s/%s missing or not a file after lvcreate", dst, d.cfg.VG, dstLV),
			d.undoCreate(ctx, dstLV))
	}
	return d.volume(lv, dst), nil
}

// OpenSnapshot activates the snapshot's LV (-K: it carries activation-skip)
// and opens its device read-only.
func (d *Driver) OpenSnapshot(ctx context.Context, s volmap.Snapshot) (*os.File, error) {
	lvName := strings.TrimPrefix(s.Device, d.cfg.VG+"/")
	d.snaps.mu.Lock()
	defer d.snaps.mu.Unlock()
	if d.snaps.opens == nil {
		d.snaps.opens, d.snaps.activated = map[string]int{}, map[string]bool{}
	}
	l, err := d.listing(ctx)
	if err != nil {
		return nil, err
	}
	lv, ok := l.lvs[lvName]
	if !ok || lv.UUID != s.ID {
		return nil, fmt.Errorf("snapshot %q (%s): %w", s.Name, s.Device, volmap.ErrNotFound)
	}
	if !lv.Active {
		if err := d.activate(ctx, lv); err != nil {
			return nil, fmt.Errorf("snapshot %q: %w", s.Name, err)
		}
		d.snaps.activated[lvName] = true
	}
	f, err := d.openDevice(lv, os.O_RDONLY|syscall.O_CLOEXEC)
	if err != nil {
		d.deactivateIdle(ctx, lvName)
		return nil, fmt.Errorf("snapshot %q: %w", s.Name, err)
	}
	d.snaps.opens[lvName]++
	return f, nil
}

// CloseSnapshot ends an OpenSnapshot; the last one deactivates the LV if
// OpenSnapshot activated it (the caller closed its fd).
func (d *Driver) CloseSnapshot(ctx context.Context, s volmap.Snapshot) {
	lvName := strings.TrimPrefix(s.Device, d.cfg.VG+"/")
	d.snaps.mu.Lock()
	defer d.snaps.mu.Unlock()
	if d.snaps.opens[lvName] > 0 {
		d.snaps.opens[lvName]--
	}
	d.deactivateIdle(ctx, lvName)
}

// deactivateIdle deactivates a snapshot LV that the driver activated and
// nobody has open any more. snaps.mu is held.
func (d *Driver) deactivateIdle(ctx context.Context, lvName string) {
	if d.snaps.opens[lvName] > 0 || !d.snaps.activated[lvName] {
		return
	}
	delete(d.snaps.opens, lvName)
	delete(d.snaps.activated, lvName)
	if err := d.deactivate(ctx, lvName); err != nil {
		d.log.Warn("could not deactivate a snapshot after its last close; it stays active",
			slog.String("lv", lvName), slog.Any("err", err))
	}
}
