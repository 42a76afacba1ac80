package lvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// DefaultTag is the tag every LV created by volfs carries when the mount is
// not limited to a tag of its own.
const DefaultTag = "volfs"

// DefaultCacheTTL is how old a cached listing may be.
const DefaultCacheTTL = time.Second

// Config configures a Driver.
type Config struct {
	// VG is the volume group whose LVs are the files.
	VG string
	// ThinPool, when set, is a thin pool in VG in which Create makes thin
	// volumes; otherwise Create makes linear volumes.
	ThinPool string
	// Tag limits the mount to LVs carrying it, and is added to every LV the
	// driver creates. Empty: every public LV is a file and created LVs
	// carry DefaultTag.
	Tag string
	// LVMPath is the lvm binary ("lvm" from $PATH when empty).
	LVMPath string
	// LVMConfig is passed to every command with --config (e.g.
	// "activation/udev_sync=0 activation/udev_rules=0" on a host without
	// udev).
	LVMConfig string
	// Log receives warnings and, at debug level, every lvm command.
	Log *slog.Logger
	// CacheTTL bounds the age of the cached listing that List, Lookup and
	// Open use (DefaultCacheTTL when zero; negative: no cache).
	CacheTTL time.Duration
	// Layout is the layout of the LVs Create makes (linear when zero);
	// it must be linear on a thin mount (thin LVs take their pool's).
	Layout volmap.Layout
	// PoolLimit refuses snapshots and clones while the thin pool's data or
	// metadata use is above this percentage (DefaultPoolLimit when zero).
	PoolLimit float64
	// LiveMigration (shared VGs only) activates linear and striped LVs
	// shared (lvchange -asy) at open, so that two hosts may open an image
	// at once, as a live migration does (shared.go).
	LiveMigration bool
	// RunDir is a directory that lasts until reboot (a tmpfs under /run)
	// where, on a shared VG, the driver records the LVs it activated, so
	// that the next mount can release those a killed server left active.
	// Empty: no record.
	RunDir string
}

// Driver is the lvm2 volmap driver. It is safe for concurrent use.
type Driver struct {
	cfg    Config
	lvm    *Runner
	log    *slog.Logger
	tag    string // added to every LV the driver creates
	vgUUID string
	extent int64

	// mu serializes the driver's changes to the VG (lvm's own locks only
	// order whole commands; multi-step operations need more).
	mu sync.Mutex

	// cacheMu guards cache, gen, flight, failedAt and took (cache.go). gen
	// counts invalidations: a refresh that started before one must not
	// install its (older) result.
	cacheMu  sync.Mutex
	cache    *listing
	latest   *listing // the last listing a refresh installed; invalidate keeps it (flight.wait)
	gen      uint64
	flight   *flight
	failedAt time.Time
	took     time.Duration // how long the last refresh took
	// own holds the driver's own changes (patch) by LV name, with when
	// each was made, until a refresh that started after it shows it
	// (an invalidation keeps them: a refresh that was under way still
	// serves the requests waiting for it); ownSeq counts them. A refresh
	// that was under way during a change installs its listing with the
	// change applied over it, and serves it so to the requests that
	// wait for it.
	own    map[string]ownLV
	ownSeq uint64
	// now is the clock of the cache (time.Now when nil; tests set it).
	now func() time.Time
	// renewing serializes renewals of an expired listing (renew; a
	// channel, so that a request can stop waiting); stampOf replaces
	// stamp in tests.
	renewing chan struct{}
	renewals atomic.Int64
	stampOf  func() (string, error)

	spaceMu sync.Mutex
	space   volmap.Space
	spaceAt time.Time

	resizeOnce sync.Once
	resizeArgs []string

	// pvMu guards pvs and pvAt: the VG's PVs, to which every command is
	// limited (discoverPVs), and when they were last looked for. It is
	// held while pvs scans; stampPVs is the same list for the stamp,
	// which does not wait for a scan.
	pvMu     sync.Mutex
	pvs      []string
	pvAt     time.Time
	stampPVs atomic.Pointer[[]string]

	// mapMu serializes readings of thin mappings (sparse.go): a pool
	// has one metadata snapshot at a time.
	mapMu sync.Mutex

	warned sync.Map // keys of warnings already logged

	// healthMu guards degraded: the health of the file LVs last seen
	// degraded, by UUID (noteHealth logs the changes).
	healthMu sync.Mutex
	degraded map[string]string

	snaps snapState // snapshots.go

	// shared is set when the VG is shared between hosts (shared.go).
	shared *sharedVG
}

var (
	_ volmap.Driver         = (*Driver)(nil)
	_ volmap.Creator        = (*Driver)(nil)
	_ volmap.Remover        = (*Driver)(nil)
	_ volmap.Renamer        = (*Driver)(nil)
	_ volmap.Resizer        = (*Driver)(nil)
	_ volmap.Binder         = (*Driver)(nil)
	_ volmap.ResizeBinder   = (*Driver)(nil)
	_ volmap.SpaceReporter  = (*Driver)(nil)
	_ volmap.SpaceHinter    = (*Driver)(nil)
	_ volmap.Detacher       = (*Driver)(nil)
	_ volmap.DetachReplacer = (*Driver)(nil)
)

// listing is one lvs run: every LV of the VG (files or not) by LVM name.
// It is never modified once published.
type listing struct {
	at      time.Time // when its lvs ended: its age counts from there
	started time.Time // when its lvs started: a later one is newer
	lvs     map[string]LV
	ownSeq  uint64   // the driver's own changes applied (Driver.ownSeq)
	stamp   string   // the VG's stamp just before its lvs started ("": none)
	watch   []string // the devices whose status the stamp holds (Driver.watched)
}

// ownLV is an LV in the state the driver's own command left it, at when
// (after the command ended).
type ownLV struct {
	lv   LV
	at   time.Time
	gone bool // removed: lv holds only its name
}

// asideLabel names the temporary LV that Replace moves a target to;
// volmap.HiddenName makes it an LV name that never decodes as a file.
const asideLabel = "volfs-aside-"

// deletedLabel names the LV of a file removed while it was still open
// (Detach); it is removed when the last handle closes (Purge).
const deletedLabel = "volfs-deleted-"

// New checks that the VG (and the thin pool, if configured) exist and
// returns a driver for it.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if err := checkVGName(cfg.VG); err != nil {
		return nil, err
	}
	if cfg.Tag != "" {
		if err := checkTag(cfg.Tag); err != nil {
			return nil, err
		}
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{
		cfg: cfg,
		lvm: &Runner{Path: cfg.LVMPath, Config: cfg.LVMConfig, Log: log},
		log: log.With(slog.String("vg", cfg.VG)),
		tag: cfg.Tag,

		renewing: make(chan struct{}, 1),
	}
	if d.tag == "" {
		d.tag = DefaultTag
	}
	// Until discoverPVs narrows it to the VG's PVs, every command may
	// scan every device but those a FUSE server may have to serve
	// (scan.go).
	if help, err := d.lvm.help(ctx, "lvs"); err == nil && strings.Contains(help, "--devices") {
		devs, skipped := d.scanLimit(ctx)
		d.logSkipped(skipped)
		d.lvm.SetDevices(devs)
	}
	out, err := d.lvm.Report(ctx, "vgs", vgFields, cfg.VG)
	if err != nil {
		if errors.Is(err, volmap.ErrNotFound) {
			return nil, fmt.Errorf("volume group %q not found (vgs lists the volume groups): %w", cfg.VG, err)
		}
		return nil, fmt.Errorf("volume group %q: %w", cfg.VG, err)
	}
	vgs, err := ParseVGs(out)
	if err != nil {
		return nil, err
	}
	if len(vgs) != 1 || vgs[0].Name != cfg.VG || vgs[0].ExtentSize <= 0 || vgs[0].UUID == "" {
		return nil, fmt.Errorf("volume group %q: unexpected vgs report %+v", cfg.VG, vgs)
	}
	d.vgUUID, d.extent = vgs[0].UUID, vgs[0].ExtentSize
	if sharedLockType(vgs[0].LockType) {
		if err := d.startShared(ctx, vgs[0].LockType); err != nil {
			return nil, err
		}
	} else if cfg.LiveMigration {
		return nil, fmt.Errorf("live migration mode needs a shared VG (lvmlockd, vgcreate --shared); "+
			"volume group %s has lock type %q", cfg.VG, vgs[0].LockType)
	}
	if err := d.discoverPVs(ctx); err != nil {
		return nil, err
	}
	l, err := d.refresh(ctx, d.clock())
	if err != nil {
		return nil, err
	}
	if cfg.ThinPool != "" {
		pool, ok := l.lvs[cfg.ThinPool]
		if !ok {
			return nil, fmt.Errorf("thin pool %s/%s not found (lvs %s lists its LVs): %w",
				cfg.VG, cfg.ThinPool, cfg.VG, volmap.ErrNotFound)
		}
		if pool.SegType != "thin-pool" {
			return nil, fmt.Errorf("%s/%s is not a thin pool (segment type %q)", cfg.VG, cfg.ThinPool, pool.SegType)
		}
		d.errorWhenFull(ctx)
		d.checkAutoextend(ctx)
	}
	if err := d.checkLayoutConfig(ctx); err != nil {
		return nil, err
	}
	deletedPrefix, _ := volmap.HiddenName(deletedLabel)
	for _, name := range slices.Sorted(maps.Keys(l.lvs)) {
		if _, renaming := intentOf(l.lvs[name]); renaming {
			continue // the target of a rename over an open file (replaceRecovery)
		}
		if strings.HasPrefix(name, deletedPrefix) && slices.Contains(l.lvs[name].Tags, d.tag) {
			// A file removed while open, whose server stopped before
			// the last close: the removal completes now.
			d.log.Info("removing the LV of a file deleted while open", slog.String("lv", name))
			if err := d.Purge(ctx, name); err != nil {
				d.log.Warn("could not remove the LV of a deleted file; remove it with lvremove",
					slog.String("lv", name), slog.Any("err", err))
			}
		}
	}
	d.releaseLeftovers(ctx, l)
	rolled := d.recover(ctx, l, d.rollbackRecovery())
	if d.recover(ctx, l, d.replaceRecovery()) || rolled {
		d.invalidate()
	}
	return d, nil
}

// VG returns the volume group's name.
func (d *Driver) VG() string { return d.cfg.VG }

// ExtentSize is the VG's allocation unit in bytes.
func (d *Driver) ExtentSize() int64 { return d.extent }

// invalidate drops the cached listing and space (after a change).
func (d *Driver) invalidate() {
	d.cacheMu.Lock()
	d.cache = nil
	d.gen++
	d.cacheMu.Unlock()
	d.dropSpace()
}

// dropSpace drops the cached space.
func (d *Driver) dropSpace() {
	d.spaceMu.Lock()
	d.spaceAt = time.Time{}
	d.spaceMu.Unlock()
}

// refresh runs lvs, which started at started, and caches the result (unless
// the cache was invalidated meanwhile or holds a newer listing).
func (d *Driver) refresh(ctx context.Context, started time.Time) (*listing, error) {
	d.cacheMu.Lock()
	gen := d.gen
	var watch []string
	if d.cache != nil {
		watch = d.watched(d.cache.lvs)
	}
	d.cacheMu.Unlock()
	stamp, err := d.stamp(watch)
	if err != nil {
		d.log.Debug("no stamp of the VG: an expired listing is read again", slog.Any("err", err))
	}
	out, err := d.lvm.Report(ctx, "lvs", lvFields, d.cfg.VG)
	if err != nil {
		return nil, fmt.Errorf("list LVs of %s: %w", d.cfg.VG, err)
	}
	rows, err := ParseLVs(out)
	if err != nil {
		return nil, err
	}
	if len(rows) > 0 && rows[0].VGMissingPVs > 0 {
		// The PVs whose metadata the stamp read are not all of the VG's.
		stamp = ""
	}
	if len(rows) > 0 && rows[0].VGMissingPVs > 0 && d.rediscoverPVs(ctx) {
		// The VG has PVs that the commands do not see (vgextend since
		// the mount): look again with the new list.
		if out, err = d.lvm.Report(ctx, "lvs", lvFields, d.cfg.VG); err == nil {
			rows, err = ParseLVs(out)
		}
		if err != nil {
			return nil, fmt.Errorf("list LVs of %s: %w", d.cfg.VG, err)
		}
	}
	// Its age counts from when lvs finished: with a thousand LVs on a slow
	// machine lvs can take longer than the TTL, and a listing aged from
	// its start would be stale on arrival (every request would wait).
	l := &listing{at: d.clock(), started: started, lvs: make(map[string]LV, len(rows)), watch: watch}
	for _, lv := range rows {
		l.lvs[lv.Name] = lv
	}
	if slices.Equal(watch, d.watched(l.lvs)) {
		// Else the stamp missed the status of a pool or RAID LV (the
		// first listing, or one made since): the next refresh's has it.
		l.stamp = stamp
	}
	d.cacheMu.Lock()
	switch {
	case d.gen != gen:
		// Invalidated meanwhile: only the requests that came before
		// wait for it.
	case d.cache == nil || !d.cache.started.After(started):
		l = d.withOwnLocked(l, true)
		d.cache, d.latest = l, l
	default:
		l = d.cache // newer, and it has the driver's own changes
	}
	d.cacheMu.Unlock()
	d.noteHealth(rows)
	return l, nil
}

// withOwnLocked returns l with the driver's own changes that l may not
// show applied over it: those made after its lvs started (or at once) (the lvs may
// have read the LV before or after the change). For a listing just read
// (fresh), the changes made before its lvs started are in it, and are
// forgotten.
func (d *Driver) withOwnLocked(l *listing, fresh bool) *listing {
	if l.ownSeq == d.ownSeq && !fresh {
		return l
	}
	var newer []ownLV
	for name, o := range d.own {
		switch {
		case !o.at.Before(l.started):
			newer = append(newer, o)
		case fresh:
			delete(d.own, name)
		}
	}
	if len(newer) > 0 {
		if !fresh {
			l = &listing{at: l.at, started: l.started, lvs: maps.Clone(l.lvs)}
		}
		for _, o := range newer {
			if o.gone {
				delete(l.lvs, o.lv.Name)
			} else {
				l.lvs[o.lv.Name] = o.lv
			}
		}
		// No longer what the stamp (taken before its lvs) says.
		l.stamp = ""
	}
	l.ownSeq = d.ownSeq
	return l
}

// patch puts one LV into the cached listing in a state the driver knows
// exactly (after its own lvcreate, lvresize or lvchange), keeping the
// listing's age: the lookups that follow a change are then served without
// another lvs of the whole VG. A refresh under way, which may have read
// the LV before the change, still installs its listing, with the change
// applied over it (withOwnLocked): a change does not throw away the
// refresh, so many changes in a row (a hundred files copied in) do not
// keep every lookup waiting for a listing. A cache invalidated meanwhile
// stays empty until the next refresh, which will show the change.
func (d *Driver) patch(lv LV) { d.patchOwn(ownLV{lv: lv}) }

// forget takes an LV the driver itself removed out of the cached listing,
// as patch puts one in.
func (d *Driver) forget(lvName string) { d.patchOwn(ownLV{lv: LV{Name: lvName}, gone: true}) }

// patchOwn applies the driver's own changes (their at is set here) to the
// cached listing at once.
func (d *Driver) patchOwn(changes ...ownLV) {
	d.cacheMu.Lock()
	defer d.cacheMu.Unlock()
	if d.own == nil {
		d.own = map[string]ownLV{}
	}
	d.ownSeq++
	now := d.clock()
	for _, c := range changes {
		c.at = now
		d.own[c.lv.Name] = c
	}
	if d.cache == nil {
		return
	}
	l := &listing{at: d.cache.at, started: d.cache.started, lvs: maps.Clone(d.cache.lvs), ownSeq: d.ownSeq}
	for _, c := range changes {
		if c.gone {
			delete(l.lvs, c.lv.Name)
		} else {
			l.lvs[c.lv.Name] = c.lv
		}
	}
	d.cache = l
}

// spaceChanged accounts for the driver's own allocation (bytes > 0) or
// release of VG space by a linear LV in the cached space, so that a
// create does not cost a vgs; any other change drops the cached space.
func (d *Driver) spaceChanged(lv LV, bytes int64) {
	if lv.Thin() && d.cfg.ThinPool != "" {
		// The pool's space changes with writes, not with thin LVs'
		// sizes: the cache ages as it does between writes.
		return
	}
	if t := layoutOf(lv).Type; t != "linear" && t != "striped" {
		d.dropSpace() // RAID: images and metadata LVs
		return
	}
	d.spaceMu.Lock()
	defer d.spaceMu.Unlock()
	if !d.spaceAt.IsZero() {
		d.space.Free -= bytes
	}
}

// fileName returns the file name of lv if it is a file of this mount.
func (d *Driver) fileName(lv LV) (string, bool) {
	if !lv.Public() || slices.Contains(lv.Layout, "pool") || strings.HasSuffix(lv.SegType, "pool") {
		return "", false
	}
	if d.cfg.Tag != "" && !slices.Contains(lv.Tags, d.cfg.Tag) {
		return "", false
	}
	return volmap.DecodeName(lv.Name)
}

// volume converts a file LV to the volume model.
func (d *Driver) volume(lv LV, file string) volmap.Volume {
	v := volmap.Volume{Name: file, ID: lv.UUID, Size: lv.Size, Used: -1, Thin: lv.Thin(), Layout: layoutOf(lv)}
	if v.Thin && lv.DataPercent >= 0 {
		v.Used = int64(math.Round(float64(lv.Size) * lv.DataPercent / 100))
	}
	a, found, err := meta.DecodeTags(lv.Tags)
	if err != nil {
		d.warnOnce("tags:"+lv.UUID+err.Error(), "LV has malformed volfs tags; using default attributes",
			slog.String("lv", lv.Name), slog.Any("err", err))
		found = false
	}
	if !found {
		a = DefaultAttrs(lv.Created)
	}
	v.Attrs = a
	// The mount's --uid, --gid and --file-mode are for images. An LV
	// without tags whose device is open on this host (a mounted file
	// system, swap: the host's own LVs in the same VG) keeps root and
	// 0600: giving it to the hypervisor's group would give that group
	// the host.
	v.Defaulted = !found && !lv.DeviceOpen()
	return v
}

// DefaultAttrs are the attributes of an LV that carries no volfs tags and
// was created at created: mode 0600, owner root, every time its creation
// time, the size of the LV.
func DefaultAttrs(created time.Time) meta.Attrs {
	return meta.Attrs{Mode: 0o600, Size: -1, Atime: created, Mtime: created, Ctime: created}
}

func (d *Driver) warnOnce(key, msg string, attrs ...any) {
	if _, dup := d.warned.LoadOrStore(key, true); !dup {
		d.log.Warn(msg, attrs...)
	}
}

// file returns the LV of the file called name, or an error wrapping
// ErrNotFound (or the name's encoding error).
func (d *Driver) file(ctx context.Context, name string) (LV, error) {
	lvName, err := volmap.EncodeName(name)
	if err != nil {
		return LV{}, err
	}
	l, err := d.listing(ctx)
	if err != nil {
		return LV{}, err
	}
	lv, ok := l.lvs[lvName]
	if !ok {
		return LV{}, fmt.Errorf("%s: no LV %s/%s: %w", name, d.cfg.VG, lvName, volmap.ErrNotFound)
	}
	if _, ok := d.fileName(lv); !ok {
		return LV{}, fmt.Errorf("%s: LV %s/%s is not a file of this mount (role %v, segment type %s, tags %v): %w",
			name, d.cfg.VG, lvName, lv.Role, lv.SegType, lv.Tags, volmap.ErrNotFound)
	}
	return lv, nil
}

// List returns every file of the mount, sorted by name.
func (d *Driver) List(ctx context.Context) ([]volmap.Volume, error) {
	l, err := d.listing(ctx)
	if err != nil {
		return nil, err
	}
	vols := make([]volmap.Volume, 0, len(l.lvs))
	for _, lv := range l.lvs {
		if file, ok := d.fileName(lv); ok {
			vols = append(vols, d.volume(lv, file))
		}
	}
	slices.SortFunc(vols, func(a, b volmap.Volume) int { return strings.Compare(a.Name, b.Name) })
	return vols, nil
}

// Lookup returns the file called name.
func (d *Driver) Lookup(ctx context.Context, name string) (volmap.Volume, error) {
	lv, err := d.file(ctx, name)
	if err != nil {
		return volmap.Volume{}, err
	}
	return d.volume(lv, name), nil
}

// Open activates the file's LV if needed (with -K, so that thin snapshots,
// which carry the activation-skip flag, activate too) and opens its device
// with flag (O_CREAT, O_EXCL and O_TRUNC are dropped: they mean nothing
// for an existing device node and O_CREAT could make a regular file in
// /dev/mapper). The device is checked to be this LV before it is returned.
func (d *Driver) Open(ctx context.Context, name string, flag int) (*os.File, error) {
	return d.OpenBound(ctx, name, "", flag)
}

// OpenBound is Open of the LV the caller listed with UUID id
// (volmap.Binder; "" for whatever LV name has). A name another host or
// tool gave to a new LV is not the file the caller holds: the mode and
// owner the kernel checked were that file's.
func (d *Driver) OpenBound(ctx context.Context, name, id string, flag int) (*os.File, error) {
	lv, err := d.fileAtHand(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := d.bound(name, lv, id); err != nil {
		return nil, err
	}
	if !lv.Active {
		if err := d.activate(ctx, lv); err != nil {
			return nil, err
		}
		d.noteActivated(lv.UUID) // on a shared VG, Idle gives the lock back
	}
	f, err := d.openDevice(lv, flag)
	if err != nil && errors.Is(err, os.ErrNotExist) {
		// The listing said active but the node is gone: deactivated by
		// another tool since.
		if aerr := d.activate(ctx, lv); aerr != nil {
			return nil, errors.Join(err, aerr)
		}
		d.noteActivated(lv.UUID)
		f, err = d.openDevice(lv, flag)
	}
	return f, err
}

func (d *Driver) activate(ctx context.Context, lv LV) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.invalidate()
	args := append(d.activateArgs(lv), d.cfg.VG+"/"+lv.Name)
	if _, err := d.lvm.Run(ctx, "lvchange", args...); err != nil {
		return fmt.Errorf("activate %s/%s: %w", d.cfg.VG, lv.Name, d.heldElsewhere(ctx, lv, err))
	}
	return nil
}

// deactivate deactivates one LV (an LV that is gone counts as done). It
// runs even if ctx is cancelled, bounded: it gives a lock back, or undoes
// an activation.
func (d *Driver) deactivate(ctx context.Context, lvName string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.invalidate()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	if _, err := d.lvm.Run(ctx, "lvchange", "-an", d.cfg.VG+"/"+lvName); err != nil &&
		!errors.Is(err, volmap.ErrNotFound) {
		return fmt.Errorf("deactivate %s/%s: %w", d.cfg.VG, lvName, err)
	}
	return nil
}

// SetAttrs stores a in the LV's volfs tags with one lvchange that removes
// the tags that change and adds their new values; nothing runs when no tag
// changes. The diff is made against the LV's tags in the listing at hand
// (fileAtHand), which holds the driver's own last change to them.
func (d *Driver) SetAttrs(ctx context.Context, name string, a meta.Attrs) error {
	return d.SetAttrsBound(ctx, name, "", a)
}

// SetAttrsBound is SetAttrs of the LV the caller listed with UUID id
// (volmap.Binder).
func (d *Driver) SetAttrsBound(ctx context.Context, name, id string, a meta.Attrs) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	lv, err := d.fileAtHand(ctx, name)
	if err != nil {
		return err
	}
	if err := d.bound(name, lv, id); err != nil {
		return err
	}
	if err := d.metadataRoom(ctx, name, lv, a); err != nil {
		return err
	}
	want := meta.EncodeTags(a)
	var del, add []string
	for _, t := range lv.Tags {
		if meta.IsTag(t) && !slices.Contains(want, t) {
			del = append(del, t)
		}
	}
	for _, t := range want {
		if !slices.Contains(lv.Tags, t) {
			add = append(add, t)
		}
	}
	if len(del) == 0 && len(add) == 0 {
		return nil
	}
	var args []string
	for _, t := range del {
		args = append(args, "--deltag", t)
	}
	for _, t := range add {
		args = append(args, "--addtag", t)
	}
	args = append(args, d.cfg.VG+"/"+lv.Name)
	if _, err := d.lvm.RunTags(ctx, args...); err != nil {
		d.invalidate()
		return fmt.Errorf("set attributes of %s (%s/%s): %w", name, d.cfg.VG, lv.Name, err)
	}
	tags := slices.DeleteFunc(slices.Clone(lv.Tags), func(t string) bool { return slices.Contains(del, t) })
	lv.Tags = append(tags, add...)
	d.patch(lv)
	return nil
}

// metadataReserve is the share of the VG's metadata area that xattrs may
// not take: the room LVM needs for the VG's own changes (every LV, and
// its other tags, is text in that area). A file's xattrs are bounded
// (meta.MaxXattrTotal), but a user owning a few dozen files could
// otherwise fill the area, after which every lvm change of the VG fails.
const metadataReserve = 4 // a quarter

// metadataRoom refuses (ErrNoSpace) attributes whose xattrs grow while the
// VG's metadata area has less room than that for them. Only growing xattrs
// are checked (one vgs): sizes, times and modes are always written.
func (d *Driver) metadataRoom(ctx context.Context, name string, lv LV, a meta.Attrs) error {
	old, _, _ := meta.DecodeTags(lv.Tags)
	grow := xattrBytes(a) - xattrBytes(old)
	if grow <= 0 {
		return nil
	}
	out, err := d.lvm.Report(ctx, "vgs", vgFields, d.cfg.VG)
	if err != nil {
		return fmt.Errorf("set xattrs of %s: read the VG's metadata room: %w", name, err)
	}
	vgs, err := ParseVGs(out)
	if err != nil || len(vgs) != 1 || vgs[0].MdaSize <= 0 || vgs[0].MdaFree < 0 {
		return nil // not reported (an old lvm): LVM's own limit stands
	}
	// Encoded, each byte takes 4/3 in base64 plus the tags' framing:
	// count twice what the xattrs hold.
	vg := vgs[0]
	if vg.MdaFree-2*grow < vg.MdaSize/metadataReserve {
		return fmt.Errorf("set xattrs of %s: the metadata area of VG %s has %d bytes free of %d, and a quarter is kept for "+
			"the VG's own changes: remove xattrs of other files, or give the VG larger metadata areas "+
			"(pvcreate --metadatasize on new PVs, then pvmove): %w", name, d.cfg.VG, vg.MdaFree, vg.MdaSize, volmap.ErrNoSpace)
	}
	return nil
}

// xattrBytes is what a's xattrs hold, names and values.
func xattrBytes(a meta.Attrs) int64 {
	var n int64
	for k, v := range a.Xattrs {
		n += int64(len(k) + len(v))
	}
	return n
}

// Space reports the thin pool's size and free space (size × (1 − data%))
// when the driver creates thin volumes, the VG's otherwise. Cached like
// the listing.
func (d *Driver) Space(ctx context.Context) (volmap.Space, error) {
	d.spaceMu.Lock()
	defer d.spaceMu.Unlock()
	if !d.spaceAt.IsZero() && time.Since(d.spaceAt) <= d.cfg.CacheTTL {
		return d.space, nil
	}
	start := time.Now()
	var s volmap.Space
	if d.cfg.ThinPool != "" {
		out, err := d.lvm.Report(ctx, "lvs", "lv_name,lv_size,data_percent", d.cfg.VG+"/"+d.cfg.ThinPool)
		if err != nil {
			return s, fmt.Errorf("space of thin pool %s/%s: %w", d.cfg.VG, d.cfg.ThinPool, err)
		}
		lvs, err := ParseLVs(out)
		if err != nil {
			return s, err
		}
		if len(lvs) != 1 {
			return s, fmt.Errorf("space of thin pool %s/%s: lvs returned %d rows", d.cfg.VG, d.cfg.ThinPool, len(lvs))
		}
		used := max(lvs[0].DataPercent, 0)
		s = volmap.Space{Total: lvs[0].Size, Free: int64(float64(lvs[0].Size) * (100 - used) / 100)}
	} else {
		out, err := d.lvm.Report(ctx, "vgs", vgFields, d.cfg.VG)
		if err != nil {
			return s, fmt.Errorf("space of %s: %w", d.cfg.VG, err)
		}
		vgs, err := ParseVGs(out)
		if err != nil {
			return s, err
		}
		if len(vgs) != 1 {
			return s, fmt.Errorf("space of %s: vgs returned %d rows", d.cfg.VG, len(vgs))
		}
		s = volmap.Space{Total: vgs[0].Size, Free: vgs[0].Free}
	}
	d.space, d.spaceAt = s, start
	return s, nil
}

// SpaceHint returns the VG's space as last read and accounted since for
// the driver's own allocations (spaceChanged), however old. Not on a thin
// mount: the pool fills with writes, which the driver does not account.
func (d *Driver) SpaceHint() (volmap.Space, bool) {
	if d.cfg.ThinPool != "" {
		return volmap.Space{}, false
	}
	d.spaceMu.Lock()
	defer d.spaceMu.Unlock()
	return d.space, !d.spaceAt.IsZero()
}

// discoverPVs finds the VG's PVs with a scan and limits every later
// command to them (--devices). volfs must not let lvm scan other devices:
// a loop device over an image of this very mount (losetup, then mkfs and
// mount on it) makes every scan of it wait for this server, which may be
// waiting for that lvm command (a loop device's flush asks volfs to persist
// the mtime with lvchange, whose scan of the loop device queues behind
// the flush: a deadlock). It runs before the mount serves, and again when
// the VG gains a PV (rediscoverPVs). Without --devices (lvm2 < 2.03.12) it
// logs that the deadlock is possible.
func (d *Driver) discoverPVs(ctx context.Context) error {
	d.pvMu.Lock()
	defer d.pvMu.Unlock()
	d.pvAt = time.Now()
	help, err := d.lvm.help(ctx, "lvs")
	if err != nil || !strings.Contains(help, "--devices") {
		d.log.Warn("this lvm has no --devices option: its commands scan every block device, and a loop "+
			"device over a file of this mount can then deadlock the mount", slog.Any("err", err))
		return nil
	}
	// Not a full scan: no device whose reading may need a FUSE server,
	// which may be this process, busy with the request that waits for
	// this scan (scan.go).
	scan := &Runner{Path: d.lvm.Path, Config: d.lvm.Config, Log: d.lvm.Log, CancelGrace: d.lvm.CancelGrace}
	devs, skipped := d.scanLimit(ctx)
	d.logSkipped(skipped)
	scan.SetDevices(devs)
	out, err := scan.Report(ctx, "pvs", "pv_name,vg_name")
	if err != nil {
		return fmt.Errorf("find the PVs of %s: %w", d.cfg.VG, err)
	}
	rows, err := parseRows(out, "pv")
	if err != nil {
		return err
	}
	pvs := vgPVs(rows, d.cfg.VG)
	if len(pvs) == 0 {
		return fmt.Errorf("find the PVs of %s: pvs lists none: %w", d.cfg.VG, volmap.ErrNotFound)
	}
	slices.Sort(pvs)
	if !slices.Equal(pvs, d.pvs) {
		d.log.Info("lvm commands limited to the VG's PVs", slog.Any("pvs", pvs))
	}
	d.pvs = pvs
	d.stampPVs.Store(&pvs)
	d.lvm.SetDevices(pvs)
	return nil
}

// vgPVs are the device paths of vg's PVs in a pvs report of pv_name and
// vg_name. A missing PV is listed as "[unknown]": it is no device, and
// --devices with it makes every lvm command fail.
func vgPVs(rows []map[string]json.RawMessage, vg string) []string {
	var pvs []string
	for _, r := range rows {
		p := rowParser{row: r}
		if name := p.str("pv_name"); p.str("vg_name") == vg && strings.HasPrefix(name, "/") {
			pvs = append(pvs, name)
		}
	}
	return pvs
}

// logSkipped logs, once per set, the devices lvm's scans leave out.
func (d *Driver) logSkipped(skipped []string) {
	if len(skipped) > 0 {
		d.warnOnce("scan-skip "+strings.Join(skipped, ","), "lvm scans leave out devices that a FUSE "+
			"server may have to serve (loop devices over files of FUSE mounts, and what is stacked on them); "+
			"a PV on one of them is not seen", slog.Any("devices", skipped))
	}
}

// rediscoverTimeout bounds a rediscovery of PVs, which runs while a
// request waits for the listing.
const rediscoverTimeout = time.Minute

// rediscoverPVs runs discoverPVs at most once a minute and reports
// whether it found a different set of PVs.
func (d *Driver) rediscoverPVs(ctx context.Context) bool {
	d.pvMu.Lock()
	old, at := d.pvs, d.pvAt
	d.pvMu.Unlock()
	if time.Since(at) < time.Minute {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, rediscoverTimeout)
	defer cancel()
	if err := d.discoverPVs(ctx); err != nil {
		d.log.Warn("the VG misses PVs and looking for them failed", slog.Any("err", err))
		return false
	}
	d.pvMu.Lock()
	defer d.pvMu.Unlock()
	return !slices.Equal(old, d.pvs)
}

// errorWhenFull makes the thin pool fail writes at once when it runs out
// of data space (lvchange --errorwhenfull y) instead of dm-thin's default:
// queue them for no_space_timeout (60 s), then fail them with EIO. A VM
// whose disk hangs for a minute and then loses its writes damages its
// file system; an ENOSPC at once is what a guest's block layer and qemu's
// werror=enospc policy (pause the VM, resume after the pool grows) expect.
// The pool may be the administrator's: the change is logged, with the old
// setting, so that it can be undone (lvchange --errorwhenfull n). A
// failure only warns: the mount still works, writes just queue when full.
func (d *Driver) errorWhenFull(ctx context.Context) {
	pool := d.cfg.VG + "/" + d.cfg.ThinPool
	out, err := d.lvm.Report(ctx, "lvs", "lv_name,lv_when_full", pool)
	if err != nil {
		d.log.Warn("cannot read the thin pool's full policy", slog.String("pool", pool), slog.Any("err", err))
		return
	}
	rows, err := parseRows(out, "lv")
	if err != nil || len(rows) != 1 {
		d.log.Warn("cannot read the thin pool's full policy", slog.String("pool", pool),
			slog.Int("rows", len(rows)), slog.Any("err", err))
		return
	}
	was := (&rowParser{row: rows[0]}).str("lv_when_full")
	if was == "error" {
		return
	}
	if _, err := d.lvm.Run(ctx, "lvchange", "--errorwhenfull", "y", pool); err != nil {
		d.log.Warn("cannot make the thin pool fail writes when full: when it fills, writes will hang for 60 s, then fail "+
			"(set it with lvchange --errorwhenfull y)", slog.String("pool", pool), slog.Any("err", err))
		return
	}
	d.log.Info("thin pool set to fail writes at once when full (was: queue them for 60 s); "+
		"lvchange --errorwhenfull n undoes it", slog.String("pool", pool), slog.String("was", was))
	d.invalidate()
}
