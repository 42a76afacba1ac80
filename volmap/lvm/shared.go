package lvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/volfs/volfs/volmap"
)

// A shared VG (lock type sanlock or dlm) is used by several hosts through
// lvmlockd. An LV's lock is its activation: activating it exclusively
// (-aey) takes the lock, deactivating it gives the lock back. So an open
// file holds its LV active on this host, and the last close deactivates it
// (Idle); another host's activation then fails at once with "LV locked by
// other host", which is EBUSY here. Thin LVs have no lock of their own:
// they use their pool's, so one host at a time can use a shared VG's thin
// pool (any thin file of it).
//
// With Config.LiveMigration, linear and striped LVs are activated shared
// (-asy) instead, so that two hosts may have one image open at once (a
// live migration opens it on the destination before the source closes
// it); resize, rename, remove and snapshot refuse an LV that another host
// has active, shared or not (busyElsewhere).
//
// A server that dies (SIGKILL) leaves the LVs it had open active, and so
// locked, on this host. The driver keeps the UUIDs it activated in a file
// under Config.RunDir; the next mount on this host deactivates those that
// nothing holds open (releaseLeftovers).

// sharedVG is the state of a driver whose VG is shared.
type sharedVG struct {
	lockType string // "sanlock" or "dlm"
	hostID   int    // this host's lvmlockd host_id (0: unknown)

	// mu guards activated: the UUIDs of the LVs that the driver activated
	// (an open, a create) and deactivates when the file is idle again. An
	// LV that was active before (a VM on /dev/VG/LV) is left as it was.
	// record is where they are kept for the next mount ("": nowhere).
	mu        sync.Mutex
	activated map[string]bool
	record    string

	// dumpMu guards dumps and dumpAt: sanlock lease dumps by offset,
	// reused for a second (volfs ls asks about every file).
	dumpMu sync.Mutex
	dumps  map[string]string
	dumpAt time.Time
}

// lockStartAttempts and lockStartWait bound how long a mount tries to start
// the VG's lockspace: a sanlock lockspace takes tens of seconds to join,
// and the first attempt on a host sometimes fails ("invalid parameters for
// sanlock") and works when repeated.
var (
	lockStartAttempts = 5
	lockStartWait     = 10 * time.Second
)

// sharedLockType reports whether a vg_lock_type makes the VG shared.
func sharedLockType(t string) bool { return t == "sanlock" || t == "dlm" }

// startShared starts the VG's lockspace on this host (unless it is started)
// with bounded retries, and checks that lvmlockd then holds it: the mount
// must not report ready before locks work.
func (d *Driver) startShared(ctx context.Context, lockType string) error {
	s := &sharedVG{lockType: lockType, activated: map[string]bool{}}
	var last error
	for attempt := 1; attempt <= lockStartAttempts; attempt++ {
		start := time.Now()
		d.log.Info("starting the shared VG's lockspace", slog.String("lock_type", lockType),
			slog.Int("attempt", attempt), slog.Int("of", lockStartAttempts))
		_, err := d.lvm.Run(ctx, "vgchange", "--lock-start", d.cfg.VG)
		if err == nil {
			err = d.lockspaceReady(ctx)
		}
		if err == nil {
			d.log.Info("lockspace started", slog.Duration("took", time.Since(start)))
			last = nil
			break
		}
		last = err
		d.log.Warn("starting the lockspace failed", slog.Int("attempt", attempt),
			slog.Duration("took", time.Since(start)), slog.Any("err", err))
		if attempt == lockStartAttempts {
			break
		}
		select {
		case <-time.After(lockStartWait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if last != nil {
		return fmt.Errorf("volume group %s is shared (lock type %s) and its lockspace did not start after %d attempts; "+
			"check that use_lvmlockd = 1 and local/host_id are set in lvm.conf or lvmlocal.conf and that lvmlockd "+
			"and %s run (vgchange --lock-start %s shows the error): %w",
			d.cfg.VG, lockType, lockStartAttempts, lockManager(lockType), d.cfg.VG, last)
	}
	s.hostID = d.hostID(ctx)
	if d.cfg.RunDir != "" {
		s.record = filepath.Join(d.cfg.RunDir, "activated-"+d.vgUUID+"-"+d.tag)
	}
	d.shared = s
	d.log.Info("shared VG", slog.String("lock_type", lockType), slog.Int("host_id", s.hostID),
		slog.Bool("live_migration", d.cfg.LiveMigration))
	return nil
}

func lockManager(lockType string) string {
	if lockType == "dlm" {
		return "dlm_controld"
	}
	return "sanlock"
}

// lockspaceReady checks that lvmlockd has joined the VG's lockspace
// (lvmlockctl --info lists "lvm_VG" once it has).
func (d *Driver) lockspaceReady(ctx context.Context) error {
	out, err := d.lvm.Tool(ctx, "lvmlockctl", "--info")
	if err != nil {
		return err
	}
	if !strings.Contains(string(out), "lvm_"+d.cfg.VG) {
		return fmt.Errorf("lvmlockctl --info does not list the lockspace lvm_%s", d.cfg.VG)
	}
	return nil
}

// hostID is this host's lvmlockd host_id (lvmconfig local/host_id), 0 if
// it cannot be read (dlm does not use it).
func (d *Driver) hostID(ctx context.Context) int {
	out, err := d.lvm.Tool(ctx, "lvmconfig", "local/host_id")
	if err != nil {
		return 0
	}
	_, v, _ := strings.Cut(strings.TrimSpace(string(out)), "=")
	n, _ := strconv.Atoi(strings.TrimSpace(v))
	return n
}

// activateArgs are lvchange's activation options for lv: exclusive on a
// shared VG (the LV's lock), shared for a linear or striped LV with
// LiveMigration, plain otherwise; -K so that thin snapshots, which carry
// the activation-skip flag, activate too.
func (d *Driver) activateArgs(lv LV) []string {
	switch {
	case d.shared != nil && d.cfg.LiveMigration && shareable(lv):
		return []string{"-asy", "-K"}
	case d.shared != nil:
		return []string{"-aey", "-K"}
	}
	return []string{"-ay", "-K"}
}

// shareable reports whether lvmlockd lets lv be active on several hosts
// at once: linear and striped LVs; thin LVs ("Shared activation not
// compatible") and RAID LVs only exclusively.
func shareable(lv LV) bool { return lv.SegType == "linear" || lv.SegType == "striped" }

// lockedElsewhere reports whether err is lvmlockd refusing an LV lock that
// another host holds.
func lockedElsewhere(err error) bool {
	var ce *CmdError
	return errors.As(err, &ce) && strings.Contains(ce.Stderr, "locked by other host")
}

// heldElsewhere turns lvmlockd's "LV locked by other host" into an error
// that names the host holding the lock when sanlock's lease area says it.
func (d *Driver) heldElsewhere(ctx context.Context, lv LV, err error) error {
	var ce *CmdError
	if d.shared != nil && errors.As(err, &ce) && strings.Contains(ce.Stderr, "locked with incompatible mode") {
		return fmt.Errorf("%s/%s is active shared on this host (live migration mode), and lvm changes it only "+
			"when active exclusively: close the file on every host first: %w", d.cfg.VG, lv.Name, err)
	}
	if d.shared == nil || !lockedElsewhere(err) {
		return err
	}
	lockLV := d.lockOf(ctx, lv)
	who := hostNames(d.otherLockHolders(ctx, lockLV, false))
	if who == "" {
		who = "another host"
	}
	return d.inUseOn(lv, lockLV, who, err)
}

// inUseOn is the error for lv, whose lock (lockLV's) who holds.
func (d *Driver) inUseOn(lv, lockLV LV, who string, err error) error {
	what := d.cfg.VG + "/" + lv.Name
	hint := "close it there first"
	if lockLV.Name != lv.Name {
		what += " (its lock is thin pool " + lockLV.Name + "'s, shared by every thin LV of it)"
		hint = "close every thin file of the pool there first, or give each host a thin pool of its own"
	}
	d.log.Info("volume is in use on another host", slog.String("lv", lv.Name), slog.String("lock", lockLV.Name),
		slog.String("holder", who))
	return fmt.Errorf("%s is active on %s, which holds its lock (%s): %w", what, who, hint, err)
}

// busyElsewhere refuses a change (resize, rename, remove, snapshot) of lv
// while another host has it, or for a thin LV its pool, active: with
// LiveMigration that host may hold it shared, which lvm alone would not
// always refuse. The error wraps ErrInUse and names the host. The lease is
// read afresh, not from the dump cache.
func (d *Driver) busyElsewhere(ctx context.Context, lv LV, what string) error {
	if d.shared == nil {
		return nil
	}
	lockLV := d.lockOf(ctx, lv)
	who := hostNames(d.otherLockHolders(ctx, lockLV, true))
	if who == "" {
		return nil
	}
	return fmt.Errorf("%s: %w", what, d.inUseOn(lv, lockLV, who, volmap.ErrInUse))
}

var _ volmap.SizeGuard = (*Driver)(nil)

// CheckResize refuses a change of the file's size while another host has
// it active (busyElsewhere), even one within the LV's extents that needs
// no lvresize: that host's view of the size, and its data, would change
// under it.
func (d *Driver) CheckResize(ctx context.Context, name string) error {
	if d.shared == nil {
		return nil
	}
	lv, err := d.file(ctx, name)
	if err != nil {
		return err
	}
	return d.busyElsewhere(ctx, lv, "change the size of "+name)
}

// hostNames is "host 1" or "hosts 1, 3"; "" for none.
func hostNames(ids []int) string {
	switch len(ids) {
	case 0:
		return ""
	case 1:
		return "host " + strconv.Itoa(ids[0])
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	return "hosts " + strings.Join(s, ", ")
}

// heldElsewhereName is heldElsewhere for the LV called lvName.
func (d *Driver) heldElsewhereName(ctx context.Context, lvName string, err error) error {
	if d.shared == nil || err == nil {
		return err
	}
	lv := LV{Name: lvName}
	if l, lerr := d.listing(ctx); lerr == nil {
		if found, ok := l.lvs[lvName]; ok {
			lv = found
		}
	}
	return d.heldElsewhere(ctx, lv, err)
}

// otherLockHolders are the hosts other than this one that hold the lock of
// lockLV (lockHolders).
func (d *Driver) otherLockHolders(ctx context.Context, lockLV LV, fresh bool) []int {
	ids := d.lockHolders(ctx, lockLV, fresh)
	return slices.DeleteFunc(ids, func(id int) bool { return id == d.shared.hostID })
}

// lockHolders returns the host ids holding the sanlock lease of lockLV (an
// LV with a lock of its own), exclusively or shared, sorted; none if that
// cannot be told (dlm, no lease offset, a dump that fails). lvmlockd names
// the lease after the LV's UUID and keeps it in the VG's lvmlock LV at the
// offset that lv_lockargs gives; "sanlock direct dump" reads it there.
// Dumps are reused for a second unless fresh.
func (d *Driver) lockHolders(ctx context.Context, lockLV LV, fresh bool) []int {
	if d.shared == nil || d.shared.lockType != "sanlock" || lockLV.UUID == "" {
		return nil
	}
	_, off, ok := strings.Cut(lockLV.LockArgs, ":")
	if _, err := strconv.ParseUint(off, 10, 64); !ok || err != nil {
		d.log.Info("cannot tell which host holds the lock: no lease offset in lv_lockargs",
			slog.String("lv", lockLV.Name), slog.String("lock_args", lockLV.LockArgs))
		return nil
	}
	s := d.shared
	s.dumpMu.Lock()
	defer s.dumpMu.Unlock()
	if s.dumps == nil || time.Since(s.dumpAt) > time.Second {
		s.dumps, s.dumpAt = map[string]string{}, time.Now()
	}
	dump, ok := s.dumps[off]
	if !ok || fresh {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		dev := "/dev/mapper/" + strings.ReplaceAll(d.cfg.VG, "-", "--") + "-lvmlock"
		out, err := d.lvm.Tool(ctx, "sanlock", "direct", "dump", dev+":"+off+":"+strconv.Itoa(sanlockLeaseSize))
		if err != nil {
			d.log.Warn("could not read the lease of a volume of a shared VG", slog.String("lv", lockLV.Name),
				slog.Any("err", err))
			return nil
		}
		dump = string(out)
		s.dumps[off] = dump
	}
	return parseLeaseHolders(dump, lockLV.UUID)
}

// sanlockLeaseSize is the size of one sanlock lease as lvmlockd lays them
// out (1 MiB, for 4 KiB sectors; 512-byte sectors use less of it).
const sanlockLeaseSize = 1 << 20

// lockOf is the LV whose lock lv uses: its thin pool for a thin LV.
func (d *Driver) lockOf(ctx context.Context, lv LV) LV {
	if lv.Thin() && lv.Pool != "" {
		if l, err := d.listing(ctx); err == nil {
			if p, ok := l.lvs[lv.Pool]; ok {
				return p
			}
		}
	}
	return lv
}

// activeOn names the other hosts that have lv active ("host 2"), "" if
// the VG is not shared or no other host holds its lock. An LV active here
// exclusively is not looked up (no other host can hold it).
func (d *Driver) activeOn(ctx context.Context, lv LV) string {
	if d.shared == nil || (lv.Active && !(d.cfg.LiveMigration && shareable(lv))) {
		return ""
	}
	return hostNames(d.otherLockHolders(ctx, d.lockOf(ctx, lv), false))
}

// parseLeaseHolders finds the lease called uuid (with or without its
// dashes) in the output of "sanlock direct dump": a row "offset lockspace
// resource timestamp own gen lver", then a row "HOST GEN SH" for each host
// holding it shared. The lease is held exclusively while its timestamp is
// not zero; own is the holder's host id. The ids are sorted.
func parseLeaseHolders(dump, uuid string) []int {
	plain := strings.ReplaceAll(uuid, "-", "")
	var ids []int
	found := false
	for line := range strings.SplitSeq(dump, "\n") {
		f := strings.Fields(line)
		if found {
			// The shared holders' rows follow the lease's row.
			if len(f) != 3 || f[2] != "SH" {
				break
			}
			if id, err := strconv.Atoi(f[0]); err == nil && id > 0 && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
			continue
		}
		for i := 0; i+2 < len(f); i++ {
			if f[i] != uuid && f[i] != plain {
				continue
			}
			found = true
			ts, err1 := strconv.ParseUint(f[i+1], 10, 64)
			own, err2 := strconv.Atoi(f[i+2])
			if err1 == nil && err2 == nil && ts != 0 && own > 0 {
				ids = append(ids, own)
			}
			break
		}
	}
	slices.Sort(ids)
	return ids
}

// noteActivated records that the driver activated lv (for Idle, and for
// the next mount should this server die).
func (d *Driver) noteActivated(uuid string) {
	if d.shared == nil || uuid == "" {
		return
	}
	d.shared.mu.Lock()
	defer d.shared.mu.Unlock()
	if !d.shared.activated[uuid] {
		d.shared.activated[uuid] = true
		d.saveActivated()
	}
}

// saveActivated writes the UUIDs of the LVs the driver activated to the
// record (one a line, replaced whole). Called with shared.mu held.
func (d *Driver) saveActivated() {
	s := d.shared
	if s.record == "" {
		return
	}
	var b strings.Builder
	for _, u := range slices.Sorted(maps.Keys(s.activated)) {
		b.WriteString(u + "\n")
	}
	err := os.MkdirAll(filepath.Dir(s.record), 0o755)
	if err == nil {
		tmp := s.record + ".tmp"
		if err = os.WriteFile(tmp, []byte(b.String()), 0o644); err == nil {
			err = os.Rename(tmp, s.record)
		}
	}
	if err != nil {
		d.warnOnce("activated-record", "could not record which LVs this server activated; if it dies, "+
			"deactivate them by hand (lvchange -an) to release their locks", slog.Any("err", err))
	}
}

// releaseLeftovers deactivates the LVs that an earlier server of this mount
// activated on this host and left active because it died (SIGKILL, a
// crash) with them open: on a shared VG an active LV keeps its lock, so no
// other host could use it. Only LVs nothing holds open any more are
// deactivated (a process that opened /dev/VG/LV meanwhile keeps it); the
// others are logged. The record is emptied.
func (d *Driver) releaseLeftovers(ctx context.Context, l *listing) {
	s := d.shared
	if s == nil || s.record == "" {
		return
	}
	b, err := os.ReadFile(s.record)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("could not read the record of LVs an earlier server activated", slog.String("file", s.record),
				slog.Any("err", err))
		}
		return
	}
	byUUID := map[string]LV{}
	for _, lv := range l.lvs {
		byUUID[lv.UUID] = lv
	}
	changed := false
	for _, uuid := range strings.Fields(string(b)) {
		lv, ok := byUUID[uuid]
		switch {
		case !ok || !lv.Active:
			continue // removed, or deactivated since
		case lv.DeviceOpen():
			d.log.Warn("an LV that an earlier server of this mount activated is still open on this host; it stays "+
				"active and locked until it is closed and deactivated (lvchange -an)", slog.String("lv", lv.Name),
				slog.String("holders", describeHolders(d.devPath(lv.Name))))
			continue
		}
		d.log.Info("deactivating an LV that an earlier server of this mount left active (it stopped with the file "+
			"open); this releases its lock", slog.String("lv", lv.Name))
		if _, err := d.lvm.Run(ctx, "lvchange", "-an", d.cfg.VG+"/"+lv.Name); err != nil {
			d.log.Warn("could not deactivate an LV left active by an earlier server; other hosts cannot use it "+
				"until it is deactivated (lvchange -an)", slog.String("lv", lv.Name), slog.Any("err", err))
			continue
		}
		changed = true
		if lv.Thin() && lv.Pool != "" {
			// lvmlockd frees a thin pool's lock when the pool is
			// inactive; "in use": another thin LV of it is active.
			_, _ = d.lvm.Run(ctx, "lvchange", "-an", d.cfg.VG+"/"+lv.Pool)
		}
	}
	if changed {
		d.invalidate()
	}
	s.mu.Lock()
	d.saveActivated()
	s.mu.Unlock()
}

var _ volmap.Idler = (*Driver)(nil)

// Idle is called when nothing of volfs has the file open any more. On a
// shared VG it deactivates the file's LV if the driver activated it, which
// gives its lock back to the other hosts (for a thin LV, the pool's lock:
// the pool is deactivated too when no other thin LV of it is active).
func (d *Driver) Idle(ctx context.Context, name string) {
	if d.shared == nil {
		return
	}
	lv, err := d.file(ctx, name)
	if err != nil {
		return // removed or renamed meanwhile: lvremove deactivated it
	}
	d.shared.mu.Lock()
	ours := d.shared.activated[lv.UUID]
	if ours {
		delete(d.shared.activated, lv.UUID)
		d.saveActivated()
	}
	d.shared.mu.Unlock()
	if !ours {
		return
	}
	if err := d.deactivate(ctx, lv.Name); err != nil {
		d.log.Warn("could not deactivate an idle volume of a shared VG; other hosts cannot use it until it is "+
			"deactivated (lvchange -an)", slog.String("lv", lv.Name), slog.Any("err", err))
		return
	}
	if lv.Thin() && lv.Pool != "" {
		// lvmlockd frees a thin pool's lock when the pool is inactive.
		// "in use": another thin LV of the pool is active here.
		if err := d.deactivate(ctx, lv.Pool); err != nil && !errors.Is(err, volmap.ErrInUse) {
			d.log.Debug("thin pool stays active", slog.String("pool", lv.Pool), slog.Any("err", err))
		}
	}
}
