package lvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// sharedVG is the state of a driver whose VG is shared.
type sharedVG struct {
	lockType string // "sanlock" or "dlm"
	hostID   int    // this host's lvmlockd host_id (0: unknown)

	// mu guards activated: the UUIDs of the LVs that the driver activated
	// (an open, a create) and deactivates when the file is idle again. An
	// LV that was active before (a VM on /dev/VG/LV) is left as it was.
	mu        sync.Mutex
	activated map[string]bool

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
	d.shared = s
	d.log.Info("shared VG", slog.String("lock_type", lockType), slog.Int("host_id", s.hostID))
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

// activateArgs are lvchange's activation options: exclusive on a shared VG
// (the LV's lock), plain otherwise; -K so that thin snapshots, which carry
// the activation-skip flag, activate too.
func (d *Driver) activateArgs() []string {
	if d.shared != nil {
		return []string{"-aey", "-K"}
	}
	return []string{"-ay", "-K"}
}

// lockedElsewhere reports whether err is lvmlockd refusing an LV lock that
// another host holds.
func lockedElsewhere(err error) bool {
	var ce *CmdError
	return errors.As(err, &ce) && strings.Contains(ce.Stderr, "locked by other host")
}

// heldElsewhere turns lvmlockd's "LV locked by other host" into an error
// that names the host holding the lock when sanlock's lease area says it.
func (d *Driver) heldElsewhere(ctx context.Context, lv LV, err error) error {
	if d.shared == nil || !lockedElsewhere(err) {
		return err
	}
	lockLV := d.lockOf(ctx, lv)
	who := "another host"
	if id := d.lockHolder(ctx, lockLV); id > 0 {
		who = "host " + strconv.Itoa(id)
	}
	what := d.cfg.VG + "/" + lv.Name
	if lockLV.Name != lv.Name {
		what += " (its lock is thin pool " + lockLV.Name + "'s, shared by every thin LV of it)"
	}
	d.log.Info("volume is in use on another host", slog.String("lv", lv.Name), slog.String("lock", lockLV.Name),
		slog.String("holder", who))
	return fmt.Errorf("%s is active on %s, which holds its lock (close it there first): %w", what, who, err)
}

// heldElsewhereName is heldElsewhere for the LV called lvName.
func (d *Driver) heldElsewhereName(ctx context.Context, lvName string, err error) error {
	if d.shared == nil || !lockedElsewhere(err) {
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

// lockHolder returns the host id holding the sanlock lease of lockLV (an
// LV with a lock of its own), 0 if that cannot be told (dlm, no lease
// offset, a dump that fails or shows no holder). lvmlockd names the lease
// after the LV's UUID and keeps it in the VG's lvmlock LV at the offset
// that lv_lockargs gives; "sanlock direct dump" reads it there.
func (d *Driver) lockHolder(ctx context.Context, lockLV LV) int {
	if d.shared == nil || d.shared.lockType != "sanlock" || lockLV.UUID == "" {
		return 0
	}
	_, off, ok := strings.Cut(lockLV.LockArgs, ":")
	if _, err := strconv.ParseUint(off, 10, 64); !ok || err != nil {
		d.log.Info("cannot tell which host holds the lock: no lease offset in lv_lockargs",
			slog.String("lv", lockLV.Name), slog.String("lock_args", lockLV.LockArgs))
		return 0
	}
	s := d.shared
	s.dumpMu.Lock()
	defer s.dumpMu.Unlock()
	if s.dumps == nil || time.Since(s.dumpAt) > time.Second {
		s.dumps, s.dumpAt = map[string]string{}, time.Now()
	}
	dump, ok := s.dumps[off]
	if !ok {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		dev := "/dev/mapper/" + strings.ReplaceAll(d.cfg.VG, "-", "--") + "-lvmlock"
		out, err := d.lvm.Tool(ctx, "sanlock", "direct", "dump", dev+":"+off+":"+strconv.Itoa(sanlockLeaseSize))
		if err != nil {
			d.log.Warn("could not read the lease of a volume locked by another host", slog.String("lv", lockLV.Name),
				slog.Any("err", err))
			return 0
		}
		dump = string(out)
		s.dumps[off] = dump
	}
	id := parseLeaseHolder(dump, lockLV.UUID)
	if id == 0 {
		d.log.Info("cannot tell which host holds the lock: its lease shows no holder", slog.String("lv", lockLV.Name),
			slog.String("lock_args", lockLV.LockArgs), slog.String("dump", strings.Join(strings.Fields(dump), " ")))
	}
	return id
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

// activeOn names the other host that has lv active ("host 2"), "" if it
// is not shared, active here, or nobody holds its lock.
func (d *Driver) activeOn(ctx context.Context, lv LV) string {
	if d.shared == nil || lv.Active {
		return ""
	}
	if id := d.lockHolder(ctx, d.lockOf(ctx, lv)); id > 0 && id != d.shared.hostID {
		return "host " + strconv.Itoa(id)
	}
	return ""
}

// parseLeaseHolder finds the lease called uuid (with or without its
// dashes) in the output of "sanlock direct dump": rows "offset lockspace
// resource timestamp own gen lver". A lease is held while its timestamp is
// not zero; own is the holder's host id.
func parseLeaseHolder(dump, uuid string) int {
	plain := strings.ReplaceAll(uuid, "-", "")
	for line := range strings.SplitSeq(dump, "\n") {
		f := strings.Fields(line)
		for i := 0; i+2 < len(f); i++ {
			if f[i] != uuid && f[i] != plain {
				continue
			}
			ts, err1 := strconv.ParseUint(f[i+1], 10, 64)
			own, err2 := strconv.Atoi(f[i+2])
			if err1 == nil && err2 == nil && ts != 0 && own > 0 {
				return own
			}
			return 0
		}
	}
	return 0
}

// noteActivated records that the driver activated lv (for Idle).
func (d *Driver) noteActivated(uuid string) {
	if d.shared == nil || uuid == "" {
		return
	}
	d.shared.mu.Lock()
	d.shared.activated[uuid] = true
	d.shared.mu.Unlock()
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
	delete(d.shared.activated, lv.UUID)
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
