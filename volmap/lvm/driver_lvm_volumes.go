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
	"time"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// undoTimeout bounds a rollback, which runs even when the caller's context
// is cancelled.
const undoTimeout = 2 * time.Minute

// newLVName encodes a file name and checks that LVM can create it in the VG.
func (d *Driver) newLVName(name string) (string, error) {
	lv, err := volmap.EncodeName(name)
	if err != nil {
		return "", err
	}
	if err := volmap.CheckDMName(d.cfg.VG, lv); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return lv, nil
}

// roundUp returns size rounded up to whole extents, at least one extent.
func (d *Driver) roundUp(size int64) (int64, error) {
	if size <= 0 {
		return d.extent, nil
	}
	n := size / d.extent
	if size%d.extent != 0 {
		n++
	}
	if n > (1<<63-1)/d.extent {
		return 0, fmt.Errorf("size %d: %w", size, volmap.ErrNoSpace)
	}
	return n * d.extent, nil
}

// roundUpStripes rounds size up to whole extents on each data stripe of
// layout (lvcreate and lvresize round a striped or RAID LV up to a full
// stripe; the driver asks for that size, so it knows the size it gets).
func (d *Driver) roundUpStripes(size int64, layout volmap.Layout) (int64, error) {
	n, err := d.roundUp(size)
	if err != nil || layout.Stripes <= 1 {
		return n, err
	}
	unit := d.extent * int64(layout.Stripes)
	if n%unit != 0 {
		if n > (1<<63-1)-unit {
			return 0, fmt.Errorf("size %d: %w", size, volmap.ErrNoSpace)
		}
		n += unit - n%unit
	}
	return n, nil
}

func layoutName(l volmap.Layout) string {
	if l.Type == "" {
		return "linear"
	}
	return l.String()
}

func bytesArg(n int64) string { return strconv.FormatInt(n, 10) + "b" }

// Create makes the LV of a new file of at least size bytes (rounded up to
// whole extents) carrying the mount tag and a's tags, written by the same
// lvcreate so that an LV never exists without them.
//
// Linear LVs are created with -Wy -Zy: LVM wipes any old signature it finds
// (so blkid, udev and lvm itself do not take a stale filesystem, RAID or PV
// header in reused extents for a real one) and zeroes the first 4 KiB. The
// rest of a linear LV holds whatever the extents held before: callers must
// not expose bytes they did not write (Volume.Thin is false). Thin LVs are
// created with -Wn (they read as zeros, there is nothing to wipe); -Z is a
// pool property and lvcreate refuses it for thin volumes.
//
// The LV takes the mount's default layout (Config.Layout).
func (d *Driver) Create(ctx context.Context, name string, size int64, a meta.Attrs) (volmap.Volume, error) {
	return d.create(ctx, name, size, a, d.cfg.Layout)
}

func (d *Driver) create(ctx context.Context, name string, size int64, a meta.Attrs, layout volmap.Layout) (volmap.Volume, error) {
	lvName, err := d.newLVName(name)
	if err != nil {
		return volmap.Volume{}, err
	}
	bytes, err := d.roundUpStripes(size, layout)
	if err != nil {
		return volmap.Volume{}, err
	}
	args := []string{"-n", lvName}
	if d.cfg.ThinPool != "" {
		args = append(args, "-V", bytesArg(bytes), "--thinpool", d.cfg.ThinPool, "-Wn")
	} else {
		if layout.Type != "" && layout.Type != "linear" {
			args = append(args, layoutArgs(layout)...)
		}
		args = append(args, "-L", bytesArg(bytes), "-Wy", "-Zy")
	}
	tags := append([]string{d.tag}, meta.EncodeTags(a)...)
	for _, t := range tags {
		args = append(args, "--addtag", t)
	}
	args = append(args, d.cfg.VG)

	d.mu.Lock()
	defer d.mu.Unlock()
	_, err = d.lvm.Run(ctx, "lvcreate", args...)
	if err != nil {
		d.invalidate()
		err = fmt.Errorf("create %s (%s/%s, %d bytes, %s): %w", name, d.cfg.VG, lvName, bytes, layoutName(layout), err)
		// LVM checks names and space before it writes anything; for
		// other failures (activation, wiping, a cancelled command) the
		// LV may exist.
		if !errors.Is(err, volmap.ErrExists) && !errors.Is(err, volmap.ErrNoSpace) &&
			!errors.Is(err, volmap.ErrInvalidName) && !errors.Is(err, volmap.ErrNameTooLong) {
			err = errors.Join(err, d.undoCreate(ctx, lvName))
		}
		return volmap.Volume{}, err
	}
	// Describe the new LV (its UUID from its device, or with an lvs of
	// it alone) and add it to the listing: the lookups that follow a
	// create need no lvs of the whole VG (with many concurrent creates,
	// one per create).
	lv, known := d.createdLV(lvName, bytes, tags, layout)
	if !known {
		lv, err = d.readLV(ctx, lvName)
	}
	if err == nil {
		if _, isFile := d.fileName(lv); isFile {
			d.spaceChanged(lv, lv.Size)
			if d.shared != nil && d.cfg.LiveMigration && shareable(lv) {
				// lvcreate activated it exclusively; open
				// activates it shared.
				if _, err := d.lvm.Run(ctx, "lvchange", "-an", d.cfg.VG+"/"+lvName); err == nil {
					d.invalidate()
					lv.Active = false
					return d.volume(lv, name), nil
				}
			}
			d.patch(lv)
			// lvcreate activated it (exclusively on a shared VG):
			// Idle deactivates it once the file is not open.
			d.noteActivated(lv.UUID)
			return d.volume(lv, name), nil
		}
		err = fmt.Errorf("created LV %s/%s is not a file of this mount: %+v", d.cfg.VG, lvName, lv)
	}
	err = errors.Join(fmt.Errorf("create %s: %w", name, err), d.undoCreate(ctx, lvName))
	d.invalidate()
	return volmap.Volume{}, err
}

// createdLV describes the LV that lvcreate has just made with lvName, size
// bytes and tags, without an lvs: from what the driver asked for, and from
// its device, whose device-mapper UUID holds the LV's UUID (lvcreate
// activates the LV). With many files created at once, an lvs of each new
// LV was one more command per file queued on the VG lock. Only for the
// LVs whose report the driver can tell in advance: linear or thin, on a
// VG not shared between hosts (lock arguments, shared activation); known
// is false otherwise, or when the device does not show a new LV of that
// size, and the caller reads the LV. The next refresh of the listing
// replaces this description with lvs's (TestCreatedLV compares them).
func (d *Driver) createdLV(lvName string, size int64, tags []string, layout volmap.Layout) (lv LV, known bool) {
	if d.shared != nil || layout.Type != "" && layout.Type != "linear" {
		return LV{}, false
	}
	lv = LV{Name: lvName, Size: size, Tags: slices.Clone(tags), DataPercent: -1, Role: []string{"public"},
		Layout: []string{"linear"}, SegType: "linear", Attr: "-wi-a-----", DMPath: d.devPath(lvName),
		Active: true, Stripes: 1, DataStripes: 1, SyncPercent: -1, Created: time.Now().Truncate(time.Second),
		ZeroesNew: true} // -Zy
	if d.cfg.ThinPool != "" {
		lv.Layout, lv.SegType, lv.Attr, lv.Pool, lv.DataPercent = []string{"thin", "sparse"}, "thin", "Vwi-a-tz--", d.cfg.ThinPool, 0
		lv.Stripes, lv.DataStripes = 0, 0
		// lvs reports the pool's discard and zeroing modes for its thin
		// LVs.
		d.cacheMu.Lock()
		var pool LV
		var ok bool
		if d.cache != nil {
			pool, ok = d.cache.lvs[d.cfg.ThinPool]
		}
		d.cacheMu.Unlock()
		if !ok {
			return LV{}, false
		}
		lv.Discards, lv.ZeroesNew = pool.Discards, pool.ZeroesNew
	}
	var st unix.Stat_t
	if unix.Stat(lv.DMPath, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return LV{}, false
	}
	lv.KernelMajor, lv.KernelMinor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	sys := fmt.Sprintf("/sys/dev/block/%d:%d/dm/uuid", lv.KernelMajor, lv.KernelMinor)
	b, err := os.ReadFile(sys)
	id, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "LVM-"+strings.ReplaceAll(d.vgUUID, "-", ""))
	if err != nil || !ok || len(id) != 32 {
		return LV{}, false
	}
	// LVM writes a UUID as 6-4-4-4-4-4-6 characters.
	lv.UUID = id[:6] + "-" + id[6:10] + "-" + id[10:14] + "-" + id[14:18] + "-" + id[18:22] + "-" + id[22:26] + "-" + id[26:]
	if !d.deviceIs(lv) {
		return LV{}, false
	}
	return lv, true
}

// readLV runs lvs for one LV.
func (d *Driver) readLV(ctx context.Context, lvName string) (LV, error) {
	out, err := d.lvm.Report(ctx, "lvs", lvFields, d.cfg.VG+"/"+lvName)
	if err != nil {
		return LV{}, fmt.Errorf("read LV %s/%s: %w", d.cfg.VG, lvName, err)
	}
	lvs, err := ParseLVs(out)
	if err != nil {
		return LV{}, err
	}
	if len(lvs) != 1 || lvs[0].Name != lvName {
		return LV{}, fmt.Errorf("read LV %s/%s: lvs returned %d rows: %w", d.cfg.VG, lvName, len(lvs), volmap.ErrNotFound)
	}
	return lvs[0], nil
}

// readLVs reads several LVs with one lvs, by name; an LV missing is an
// error (ErrNotFound).
func (d *Driver) readLVs(ctx context.Context, lvNames ...string) (map[string]LV, error) {
	args := make([]string, len(lvNames))
	for i, n := range lvNames {
		args[i] = d.cfg.VG + "/" + n
	}
	out, err := d.lvm.Report(ctx, "lvs", lvFields, args...)
	if err != nil {
		return nil, fmt.Errorf("read LVs %s: %w", strings.Join(args, " "), err)
	}
	rows, err := ParseLVs(out)
	if err != nil {
		return nil, err
	}
	m := make(map[string]LV, len(rows))
	for _, lv := range rows {
		m[lv.Name] = lv
	}
	for _, n := range lvNames {
		if _, ok := m[n]; !ok {
			return nil, fmt.Errorf("read LV %s/%s: lvs did not list it: %w", d.cfg.VG, n, volmap.ErrNotFound)
		}
	}
	return m, nil
}

// undoCreate removes the LV a failed Create may have left, if it exists
// and carries the mount tag. It runs even if ctx is cancelled.
func (d *Driver) undoCreate(ctx context.Context, lvName string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	lv, err := d.readLV(ctx, lvName)
	if errors.Is(err, volmap.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("rollback: cannot tell whether %s/%s was left behind: %w", d.cfg.VG, lvName, err)
	}
	if !slices.Contains(lv.Tags, d.tag) {
		return nil // not ours
	}
	if _, err := d.lvm.Run(ctx, "lvremove", d.cfg.VG+"/"+lvName); err != nil {
		return fmt.Errorf("rollback: half-created LV %s/%s left behind: %w", d.cfg.VG, lvName, err)
	}
	d.log.Info("removed half-created LV", slog.String("lv", lvName))
	return nil
}

// Remove removes the file's LV (lvremove deactivates it first). An LV that
// is open elsewhere is not removed: the error wraps ErrInUse and names
// what holds it when that can be found (processes, mounts, stacked
// devices, loop devices).
//
// A removal takes the LV out of the cached listing (forget), which
// keeps serving: `rm` then `ls -l` does not wait for an lvs of the whole
// VG. When the listing shows LVs that depend on it (snapshots, whose rows
// lvremove changes or removes too), or on any error, the listing is
// dropped instead.
func (d *Driver) Remove(ctx context.Context, name string) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var removed LV
	defer func() {
		if err != nil || d.hasDependents(removed) {
			d.invalidate()
			return
		}
		d.forget(removed.Name)
		d.dropSpace()
	}()
	lv, err := d.file(ctx, name)
	if err != nil {
		return err
	}
	if _, err := d.verifyIdentity(ctx, name, lv); err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	if err := d.busyElsewhere(ctx, lv, "remove "+name); err != nil {
		return err
	}
	removed = lv
	return d.remove(ctx, name, lv.Name)
}

// hasDependents reports whether the cached listing shows an LV whose
// origin or pool is lv.
func (d *Driver) hasDependents(lv LV) bool {
	d.cacheMu.Lock()
	defer d.cacheMu.Unlock()
	if d.cache == nil {
		return false
	}
	for _, o := range d.cache.lvs {
		if o.Origin == lv.Name || o.Pool == lv.Name {
			return true
		}
	}
	return false
}

// bound refuses, with ErrChanged, when the file name is no longer the LV
// the caller listed with UUID id: another host or tool removed that one
// and made a new LV under the name (volfs's own changes move or drop the
// caller's file first). lv is what the listing has under the name; the
// listing may be up to a TTL old, so an active device under the name is
// asked too (its device-mapper UUID names its LV). id "" binds nothing.
func (d *Driver) bound(name string, lv LV, id string) error {
	if id == "" {
		return nil
	}
	now := "uuid " + lv.UUID
	if lv.UUID == id {
		rdev, ok := blockDevAt(d.devPath(lv.Name))
		if !ok {
			return nil // not active here: the listing is all there is
		}
		dm, err := dmUUIDOf(rdev)
		if err != nil || dm == d.dmUUID(lv) {
			return nil
		}
		now = "device-mapper uuid " + dm
		d.invalidate()
	}
	d.log.Warn("refused a stale file: its name now names another LV",
		slog.String("volume", name), slog.String("lv", d.cfg.VG+"/"+lv.Name),
		slog.String("listed_uuid", id), slog.String("now_uuid", now))
	return fmt.Errorf("%s: LV %s/%s is now %s, not the file's uuid %s (removed and made again by another tool or host); "+
		"look the file up again: %w", name, d.cfg.VG, lv.Name, now, id, volmap.ErrChanged)
}

// verifyIdentity rereads the LV that the listing says is the file name
// (one lvs of that LV, not the cached listing) and refuses when it is no
// longer that LV. The listing may be up to a CacheTTL old, and another
// tool may meanwhile have renamed or removed the LV and made a new one
// under its name: an lvremove or lvrename by name would then act on that
// other LV. lvrename has no way to name an LV by its UUID, so both check
// the UUID right before acting, under d.mu (volfs's own changes cannot
// come in between; another tool's could only in the milliseconds between
// this lvs and the command). The error wraps ErrNotFound when the LV is
// gone, and ErrChanged when the name now holds another LV (the caller's
// file is stale). It returns the LV as that lvs read it.
func (d *Driver) verifyIdentity(ctx context.Context, name string, lv LV) (LV, error) {
	now, err := d.readLV(ctx, lv.Name)
	if err != nil {
		if errors.Is(err, volmap.ErrNotFound) {
			d.invalidate()
			return LV{}, fmt.Errorf("LV %s/%s (uuid %s) was removed or renamed by another tool: %w",
				d.cfg.VG, lv.Name, lv.UUID, err)
		}
		return LV{}, err
	}
	if now.UUID != lv.UUID {
		d.invalidate()
		return LV{}, fmt.Errorf("LV %s/%s is now uuid %s, not the file's uuid %s (renamed or recreated by another tool); "+
			"nothing was changed, look the file up again: %w", d.cfg.VG, lv.Name, now.UUID, lv.UUID, volmap.ErrChanged)
	}
	return now, nil
}

func (d *Driver) remove(ctx context.Context, name, lvName string) error {
	_, err := d.lvm.Run(ctx, "lvremove", d.cfg.VG+"/"+lvName)
	if err == nil {
		return nil
	}
	if lockedElsewhere(err) {
		return fmt.Errorf("remove %s: %w", name, d.heldElsewhereName(ctx, lvName, err))
	}
	if errors.Is(err, volmap.ErrInUse) {
		return fmt.Errorf("remove %s (%s/%s): the volume is open: %s: %w",
			name, d.cfg.VG, lvName, describeHolders(d.devPath(lvName)), err)
	}
	return fmt.Errorf("remove %s (%s/%s): %w", name, d.cfg.VG, lvName, err)
}

// Rename renames the file's LV. It fails with ErrExists when an LV called
// newName exists (lvrename cannot replace; see Replace).
//
// Like Remove, a rename patches the cached listing (the LV moves to its
// new name and device path), which keeps serving: `mv` then `ls -l` does
// not wait for an lvs. On errors, or when LVs depend on it (snapshots,
// whose origin lvs reports by name), the listing is dropped instead.
func (d *Driver) Rename(ctx context.Context, oldName, newName string) (err error) {
	newLV, err := d.newLVName(newName)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var from LV
	defer func() {
		if err != nil || from.Name == "" || d.hasDependents(from) {
			d.invalidate()
			return
		}
		to := from
		to.Name = newLV
		if to.DMPath != "" {
			to.DMPath = d.devPath(newLV)
		}
		d.patchOwn(ownLV{lv: LV{Name: from.Name}, gone: true}, ownLV{lv: to})
	}()
	lv, err := d.file(ctx, oldName)
	if err != nil {
		return err
	}
	if lv.Name == newLV {
		return nil
	}
	// The LV as lvs reads it now is what moves to the new name.
	now, err := d.verifyIdentity(ctx, oldName, lv)
	if err != nil {
		return fmt.Errorf("rename %s: %w", oldName, err)
	}
	if err := d.busyElsewhere(ctx, lv, "rename "+oldName); err != nil {
		return err
	}
	if err := d.rename(ctx, lv.Name, newLV); err != nil {
		return err
	}
	from = now
	return nil
}

func (d *Driver) rename(ctx context.Context, from, to string) error {
	if _, err := d.lvm.Run(ctx, "lvrename", d.cfg.VG, from, to); err != nil {
		return fmt.Errorf("rename %s/%s to %s: %w", d.cfg.VG, from, to, d.heldElsewhereName(ctx, from, err))
	}
	return nil
}

// Resize changes the file's LV to size bytes rounded up to whole extents
// (at least one) and returns the new size. Shrinking is allowed (-f): the
// caller decides. lvm2 >= 2.03.17 would check a filesystem it finds in
// the LV; "--fs ignore" is passed where lvresize knows it, since the bytes
// of a file are not ours to interpret.
func (d *Driver) Resize(ctx context.Context, name string, size int64) (int64, error) {
	return d.ResizeBound(ctx, name, "", size)
}

// ResizeBound is Resize of the LV the caller listed with UUID id
// (volmap.ResizeBinder).
func (d *Driver) ResizeBound(ctx context.Context, name, id string, size int64) (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	lv, err := d.fileAtHand(ctx, name)
	if err != nil {
		return 0, err
	}
	if err := d.bound(name, lv, id); err != nil {
		return 0, err
	}
	target, err := d.roundUpStripes(size, layoutOf(lv))
	if err != nil {
		return 0, err
	}
	if lv.Size == target {
		return target, nil
	}
	if err := d.busyElsewhere(ctx, lv, fmt.Sprintf("resize %s to %d bytes", name, target)); err != nil {
		return 0, err
	}
	if target < lv.Size && lv.Thin() {
		d.discardTail(lv, target)
	}
	args := append([]string{"-f", "-L", bytesArg(target)}, d.resizeFSArgs(ctx)...)
	args = append(args, d.cfg.VG+"/"+lv.Name)
	if _, err := d.lvm.Run(ctx, "lvresize", args...); err != nil {
		d.invalidate()
		var ce *CmdError
		if errors.As(err, &ce) && strings.Contains(ce.Stderr, "matches existing size") {
			return target, nil // the listing was stale
		}
		return 0, fmt.Errorf("resize %s (%s/%s) from %d to %d bytes: %w", name, d.cfg.VG, lv.Name, lv.Size, target,
			d.heldElsewhere(ctx, lv, err))
	}
	if lv.Thin() && target < lv.Size {
		d.invalidate() // discardTail gave chunks back: the pool's use is read again
		return target, nil
	}
	// The listing keeps its age with the new size: a file growing by
	// steps, or trimmed at its last close, costs no lvs of the VG.
	d.spaceChanged(lv, target-lv.Size)
	if lv.Thin() && lv.DataPercent > 0 {
		lv.DataPercent *= float64(lv.Size) / float64(target) // as many bytes mapped
	}
	lv.Size = target
	d.patch(lv)
	return target, nil
}

// discardTail unmaps [from, end) of a thin LV about to shrink to from
// bytes: lvresize leaves those chunks mapped ("Thin volume maps X while the
// size is only Y"), so the pool would not get the space back and an LV
// grown again would show the old data. Best effort, and only for an
// active LV (volfs shrinks the LVs it has open; activating one just to
// unmap is not worth a device suspend).
func (d *Driver) discardTail(lv LV, from int64) {
	if !lv.Active {
		return
	}
	f, err := d.openDevice(lv, os.O_WRONLY)
	if err == nil {
		rng := [2]uint64{uint64(from), uint64(lv.Size - from)}
		err = ioctlPtr(f, unix.BLKDISCARD, &rng)
		f.Close()
	}
	if err != nil {
		d.log.Warn("could not unmap the end of a thin LV before shrinking it; the pool keeps that space",
			slog.String("lv", lv.Name), slog.Int64("from", from), slog.Int64("size", lv.Size), slog.Any("err", err))
	}
}

// resizeFSArgs returns "--fs ignore" if this lvresize has --fs.
func (d *Driver) resizeFSArgs(ctx context.Context) []string {
	d.resizeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		help, err := d.lvm.help(ctx, "lvresize")
		if err != nil {
			d.log.Warn("cannot read lvresize --help; not passing --fs", slog.Any("err", err))
			return
		}
		if strings.Contains(help, "--fs ") {
			d.resizeArgs = []string{"--fs", "ignore"}
		}
	})
	return d.resizeArgs
}

// Detach renames a file's LV to a hidden name that no file decodes to, so
// the name is free while volfs's open handles keep using the device
// (renaming an active LV renames its device-mapper device; open fds stay
// valid). The token is the hidden LV name.
func (d *Driver) Detach(ctx context.Context, name string) (string, error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	hidden, err := volmap.HiddenName(deletedLabel + hex.EncodeToString(rnd[:]))
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	lv, err := d.file(ctx, name)
	if err != nil {
		return "", err
	}
	// Only this process may hold it: a holder elsewhere (a VM started on
	// the LV's device, a mount, a loop device) would make the removal at
	// the last close fail, after the name is gone.
	if who := otherHolders(d.devPath(lv.Name)); len(who) > 0 {
		return "", fmt.Errorf("remove %s (%s/%s): the volume is open outside volfs: %s: %w",
			name, d.cfg.VG, lv.Name, strings.Join(who, "; "), volmap.ErrInUse)
	}
	defer d.invalidate()
	if _, err := d.verifyIdentity(ctx, name, lv); err != nil {
		return "", fmt.Errorf("remove %s while open: %w", name, err)
	}
	if err := d.busyElsewhere(ctx, lv, "remove "+name+" while open"); err != nil {
		return "", err
	}
	if err := d.rename(ctx, lv.Name, hidden); err != nil {
		return "", fmt.Errorf("remove %s while open: %w", name, err)
	}
	return hidden, nil
}

// Reattach renames an LV that Detach hid back to the LV of the file name.
func (d *Driver) Reattach(ctx context.Context, token, name string) error {
	prefix, _ := volmap.HiddenName(deletedLabel)
	if !strings.HasPrefix(token, prefix) {
		return fmt.Errorf("reattach %q: %w: not a detached volume", token, volmap.ErrInvalidName)
	}
	lvName, err := d.newLVName(name)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.invalidate()
	return d.rename(ctx, token, lvName)
}

// Purge removes an LV that Detach hid. It refuses any other LV.
func (d *Driver) Purge(ctx context.Context, token string) error {
	prefix, _ := volmap.HiddenName(deletedLabel)
	if !strings.HasPrefix(token, prefix) {
		return fmt.Errorf("purge %q: %w: not a detached volume", token, volmap.ErrInvalidName)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.invalidate()
	if _, err := d.lvm.Run(ctx, "lvremove", d.cfg.VG+"/"+token); err != nil {
		return fmt.Errorf("remove the LV of a deleted file %s/%s: %w", d.cfg.VG, token, err)
	}
	return nil
}
