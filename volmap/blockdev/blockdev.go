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
}

type device struct {
	path string // the matched path (may be a symlink)
	id   string
}

var _ volmap.Driver = (*Driver)(nil)
var _ volmap.SpaceReporter = (*Driver)(nil)

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
	d := &Driver{cfg: cfg, store: store, log: cfg.Log, warned: map[string]bool{}, rescanIn: time.Second}
	if err := d.scan(); err != nil {
		return nil, err
	}
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
			if !volmap.IsBlockDevice(m) {
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
			devs[name] = device{path: m, id: d.identity(m)}
		}
	}
	d.devs = devs
	d.scanned = time.Now()
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

// identity names a device in a way that survives reboots and re-attachment:
// a loop device by its backing file and offset, others by their
// /dev/disk/by-id link, else by the path that matched.
func (d *Driver) identity(path string) string {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = path
	}
	base := filepath.Base(real)
	if strings.HasPrefix(base, "loop") {
		bf, err1 := os.ReadFile(d.sys("/sys/block/" + base + "/loop/backing_file"))
		off, err2 := os.ReadFile(d.sys("/sys/block/" + base + "/loop/offset"))
		if err1 == nil && err2 == nil {
			return "loop:" + strings.TrimSpace(string(bf)) + "@" + strings.TrimSpace(string(off))
		}
	}
	if ents, err := os.ReadDir(d.sys("/dev/disk/by-id")); err == nil {
		for _, e := range ents {
			t, err := filepath.EvalSymlinks(d.sys("/dev/disk/by-id/" + e.Name()))
			if err == nil && filepath.Base(t) == base {
				return "by-id:" + e.Name()
			}
		}
	}
	return "path:" + path
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
	f, err := os.Open(dev.path)
	if err != nil {
		return volmap.Volume{}, fmt.Errorf("open %s: %w", dev.path, err)
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
		attrs = defaults(f)
	}
	// A block device's size is its file size; nothing else is recorded.
	attrs.Size = -1
	return volmap.Volume{Name: name, ID: dev.id, Size: size, Used: -1, Attrs: attrs, Defaulted: !found}, nil
}

// defaults are the attributes of a device volfs has not seen before: the
// device node's own mode, owner and times, so the mount grants exactly the
// access /dev does.
func defaults(f *os.File) meta.Attrs {
	a := meta.Attrs{Mode: 0o600, Size: -1}
	if st, err := f.Stat(); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			a.Mode = uint32(st.Mode().Perm())
			a.UID, a.GID = sys.Uid, sys.Gid
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
	f, err := os.OpenFile(dev.path, flag&^(os.O_CREATE|os.O_TRUNC|os.O_EXCL), 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev.path, err)
	}
	return f, nil
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
