package blockdev

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// Config says which devices a Driver serves.
type Config struct {
	// Globs select the devices (filepath.Match syntax), e.g. /dev/zvol/tank/vms/*.
	Globs []string
	// StateDir keeps the attributes volumes do not have (mode, owner, ...).
	StateDir string
	Log      *slog.Logger
	// Claim, if set, is called once for each device identity before the
	// device is served, and refuses one that another server serves. At
	// New, a refusal is an error; a device found by a later scan is then
	// skipped with a warning.
	Claim func(id string) error
	// SysRoot is where sysfs and /dev/disk/by-id are looked up ("" = "/");
	// tests point it elsewhere.
	SysRoot string
}

// Driver exposes existing block devices.
type Driver struct {
	cfg   Config
	store *meta.FileStore
	log   *slog.Logger

	mu       sync.Mutex
	devs     map[string]device // by file name
	scanned  time.Time
	warned   map[string]bool // paths already warned about
	rescanIn time.Duration

	// known is the last device each name led to, for the whole mount (a
	// name that disappears and comes back leading elsewhere is new).
	known map[string]device
	// claimed are the identities Config.Claim granted.
	claimed map[string]bool
	// initial is true during New's scan, when a refused claim is an error.
	initial bool
}

type device struct {
	path string // the matched path (may be a symlink)
	// rdev is the device number the path led to at the scan: every open
	// must reach this device (see openChecked).
	rdev uint64
	id   string
	// changed: the name led to another device at an earlier scan of this
	// mount. Such a device is a new file that starts as mode 0600 owned by
	// root, whoever owned the file before.
	changed bool
}

var (
	_ volmap.Driver        = (*Driver)(nil)
	_ volmap.SpaceReporter = (*Driver)(nil)
	_ volmap.Binder        = (*Driver)(nil)
)

// New checks the globs and returns a driver. No block device matched at all
// is an error; a match that is not a block device is skipped with a warning.
func New(cfg Config) (*Driver, error) {
	if len(cfg.Globs) == 0 {
		return nil, fmt.Errorf("no --device glob given")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	for _, g := range cfg.Globs {
		if _, err := filepath.Match(g, ""); err != nil {
			return nil, fmt.Errorf("--device %q: %w", g, err)
		}
	}
	store, err := meta.NewFileStore(filepath.Join(cfg.StateDir, "blockdev"))
	if err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, store: store, log: cfg.Log, warned: map[string]bool{}, known: map[string]device{}, claimed: map[string]bool{}, rescanIn: time.Second, initial: true}
	if err := d.scan(); err != nil {
		return nil, err
	}
	d.initial = false
	if len(d.devs) == 0 {
		return nil, fmt.Errorf("no block device matches %s: check the paths, or create the devices first",
			strings.Join(cfg.Globs, " "))
	}
	return d, nil
}

// scan re-expands the globs; devices that appear later (a new zvol) show up
// within a second.
func (d *Driver) scan() error {
	devs := map[string]device{}
	for _, g := range d.cfg.Globs {
		matches, err := filepath.Glob(g)
		if err != nil {
			return fmt.Errorf("--device %q: %w", g, err)
		}
		sort.Strings(matches)
		for _, m := range matches {
			rdev, ok := blockRdev(m)
			if !ok {
				d.warnOnce(m, "skipping a match that is not a block device", slog.String("path", m))
				continue
			}
			name := filepath.Base(m)
			if prev, dup := devs[name]; dup {
				if prev.path != m {
					d.warnOnce(m, "skipping a device whose name is already taken",
						slog.String("path", m), slog.String("name", name), slog.String("taken_by", prev.path))
				}
				continue
			}
			dev := device{path: m, rdev: rdev, id: d.identity(rdev)}
			if err := d.claim(dev.id); err != nil {
				if d.initial {
					return fmt.Errorf("%s: %w", m, err)
				}
				d.warnOnce("claim "+dev.id, "skipping a device another server serves",
					slog.String("path", m), slog.String("id", dev.id), slog.Any("err", err))
				continue
			}
			if prev, ok := d.known[name]; ok && (prev.id != dev.id || prev.changed) {
				dev.changed = true
				if prev.id != dev.id {
					d.log.Warn("a device file now leads to another device: it is a different file (new inode number; mode 0600 owned by root unless that device has attributes of its own)",
						slog.String("volume", name), slog.String("path", m),
						slog.String("was", devno(prev.rdev)), slog.String("now", devno(rdev)),
						slog.String("was_id", prev.id), slog.String("now_id", dev.id))
				}
			}
			d.known[name] = dev
			devs[name] = dev
		}
	}
	d.devs = devs
	d.scanned = time.Now()
	return nil
}

func (d *Driver) claim(id string) error {
	if d.cfg.Claim == nil || d.claimed[id] {
		return nil
	}
	if err := d.cfg.Claim(id); err != nil {
		return err
	}
	d.claimed[id] = true
	return nil
}

func (d *Driver) warnOnce(key, msg string, attrs ...any) {
	if !d.warned[key] {
		d.warned[key] = true
		d.log.Warn(msg, attrs...)
	}
}

func (d *Driver) devices() (map[string]device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if time.Since(d.scanned) > d.rescanIn {
		if err := d.scan(); err != nil {
			return nil, err
		}
	}
	return d.devs, nil
}

func (d *Driver) sys(p string) string { return filepath.Join(d.cfg.SysRoot, p) }

// identity names a device in a way that survives reboots and re-attachment
// and that no user can change: a loop device by its backing file and
// offset, others by their /dev/disk/by-id link, else by the device number.
// Never by the matched path: whoever owns a directory on it can re-point a
// symlink there.
func (d *Driver) identity(rdev uint64) string {
	sysdev := d.sys(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(rdev), unix.Minor(rdev)))
	bf, err1 := os.ReadFile(sysdev + "/loop/backing_file")
	off, err2 := os.ReadFile(sysdev + "/loop/offset")
	if err1 == nil && err2 == nil && len(strings.TrimSpace(string(bf))) > 0 {
		return "loop:" + strings.TrimSpace(string(bf)) + "@" + strings.TrimSpace(string(off))
	}
	if ents, err := os.ReadDir(d.sys("/dev/disk/by-id")); err == nil {
		for _, e := range ents {
			if r, ok := blockRdev(d.sys("/dev/disk/by-id/" + e.Name())); ok && r == rdev {
				return "by-id:" + e.Name()
			}
		}
	}
	return "dev:" + devno(rdev)
}

// blockRdev returns the device number of the block device path leads to.
func blockRdev(path string) (uint64, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, false
	}
	return st.Rdev, true
}

func devno(rdev uint64) string { return fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev)) }

// openChecked opens a matched device and makes sure the fd is the device
// the scan listed: the path may be a symlink re-pointed since. A mismatch
// is ErrChanged, logged, and the next call rescans.
func (d *Driver) openChecked(name string, dev device, flag int) (*os.File, error) {
	f, err := os.OpenFile(dev.path, flag&^(os.O_CREATE|os.O_TRUNC|os.O_EXCL), 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev.path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("fstat %s: %w", dev.path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == dev.rdev {
		return f, nil
	}
	f.Close()
	now := "not a block device"
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		now = "device " + devno(st.Rdev)
	}
	d.log.Warn("refused to open a device file whose path now leads elsewhere",
		slog.String("volume", name), slog.String("path", dev.path),
		slog.String("listed", devno(dev.rdev)), slog.String("now", now))
	d.mu.Lock()
	d.scanned = time.Time{}
	d.mu.Unlock()
	return nil, fmt.Errorf("%s was listed as device %s but now leads to %s (a re-pointed symlink?); it is a different file now, look it up again: %w",
		dev.path, devno(dev.rdev), now, volmap.ErrChanged)
}

// bound returns the device name stands for, if it is still the one whose
// identity is id.
func (d *Driver) bound(name, id string) (device, error) {
	devs, err := d.devices()
	if err != nil {
		return device{}, err
	}
	dev, ok := devs[name]
	if !ok {
		return device{}, fmt.Errorf("%s: %w", name, volmap.ErrNotFound)
	}
	if dev.id != id {
		d.log.Warn("refused a stale file: its name now leads to another device",
			slog.String("volume", name), slog.String("path", dev.path),
			slog.String("listed_id", id), slog.String("now_id", dev.id))
		return device{}, fmt.Errorf("%s: listed as %s, now %s: %w", dev.path, id, dev.id, volmap.ErrChanged)
	}
	return dev, nil
}

// OpenBound is Open of the device name was listed as (volmap.Binder).
func (d *Driver) OpenBound(_ context.Context, name, id string, flag int) (*os.File, error) {
	dev, err := d.bound(name, id)
	if err != nil {
		return nil, err
	}
	return d.openChecked(name, dev, flag)
}

// SetAttrsBound is SetAttrs of the device name was listed as
// (volmap.Binder).
func (d *Driver) SetAttrsBound(_ context.Context, name, id string, a meta.Attrs) error {
	dev, err := d.bound(name, id)
	if err != nil {
		return err
	}
	return d.save(name, dev, a)
}

// List returns every matched device.
func (d *Driver) List(ctx context.Context) ([]volmap.Volume, error) {
	devs, err := d.devices()
	if err != nil {
		return nil, err
	}
	out := make([]volmap.Volume, 0, len(devs))
	for name := range devs {
		v, err := d.Lookup(ctx, name)
		if err != nil {
			d.log.Warn("skipping device", slog.String("volume", name), slog.Any("err", err))
			continue
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Lookup returns one device by its file name.
func (d *Driver) Lookup(_ context.Context, name string) (volmap.Volume, error) {
	devs, err := d.devices()
	if err != nil {
		return volmap.Volume{}, err
	}
	dev, ok := devs[name]
	if !ok {
		return volmap.Volume{}, fmt.Errorf("%s: %w", name, volmap.ErrNotFound)
	}
	f, err := d.openChecked(name, dev, os.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return volmap.Volume{}, err
	}
	defer f.Close()
	size, err := volmap.DeviceSize(f)
	if err != nil {
		return volmap.Volume{}, err
	}
	attrs, found, err := d.store.Load(dev.id)
	if err != nil {
		return volmap.Volume{}, fmt.Errorf("attributes of %s: %w", name, err)
	}
	if !found {
		attrs = defaults(f, dev.changed)
	}
	// A block device's size is its file size; nothing else is recorded.
	attrs.Size = -1
	return volmap.Volume{Name: name, ID: dev.id, Size: size, Used: -1, Attrs: attrs}, nil
}

// defaults are the attributes of a device volfs has not seen before: the
// device node's own mode, owner and times, so the mount grants exactly the
// access /dev does; for a name that led to another device earlier in this
// mount (changed), mode 0600 owned by root.
func defaults(f *os.File, changed bool) meta.Attrs {
	a := meta.Attrs{Mode: 0o600, Size: -1}
	if st, err := f.Stat(); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			if !changed {
				a.Mode = uint32(st.Mode().Perm())
				a.UID, a.GID = sys.Uid, sys.Gid
			}
			a.Mtime = time.Unix(sys.Mtim.Unix())
			a.Ctime = time.Unix(sys.Ctim.Unix())
			a.Atime = a.Mtime
		}
	}
	return a
}

// Open opens the device of a matched volume. O_CREAT, O_TRUNC and O_EXCL are
// never passed on: the device exists, and its bytes are not truncated.
func (d *Driver) Open(_ context.Context, name string, flag int) (*os.File, error) {
	devs, err := d.devices()
	if err != nil {
		return nil, err
	}
	dev, ok := devs[name]
	if !ok {
		return nil, fmt.Errorf("%s: %w", name, volmap.ErrNotFound)
	}
	return d.openChecked(name, dev, flag)
}

// SetAttrs stores a volume's attributes in the state directory.
func (d *Driver) SetAttrs(_ context.Context, name string, a meta.Attrs) error {
	devs, err := d.devices()
	if err != nil {
		return err
	}
	dev, ok := devs[name]
	if !ok {
		return fmt.Errorf("%s: %w", name, volmap.ErrNotFound)
	}
	return d.save(name, dev, a)
}

func (d *Driver) save(name string, dev device, a meta.Attrs) error {
	a.Size = -1
	if err := d.store.Save(dev.id, a); err != nil {
		return fmt.Errorf("save attributes of %s in %s: %w", name, d.store.Dir(), err)
	}
	return nil
}

// Space reports the devices' total size; none of it is free for new files.
func (d *Driver) Space(ctx context.Context) (volmap.Space, error) {
	vols, err := d.List(ctx)
	if err != nil {
		return volmap.Space{}, err
	}
	var s volmap.Space
	for _, v := range vols {
		s.Total += v.Size
	}
	return s, nil
}
