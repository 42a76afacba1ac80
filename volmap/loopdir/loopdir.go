package loopdir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/volfs/volfs/internal/holders"
	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// Defaults of Config.
const (
	DefaultCapacity = 1 << 30
	DefaultExtent   = 4 << 20
	DefaultMaxName  = 255
)

// Config configures a Driver.
type Config struct {
	// Dir holds the driver's state: index.json (names, identities,
	// attributes) and images/ (one sparse file per volume). It is created
	// 0700 if missing; a directory used before is picked up again.
	Dir string
	// Capacity is the pool's size: the sum of the volumes' sizes (detached
	// ones included) never exceeds it. DefaultCapacity when zero.
	Capacity int64
	// Extent is the allocation unit: every volume is a whole number of
	// extents, at least one. DefaultExtent when zero.
	Extent int64
	// Thin volumes read as zeros where nothing was written, report the
	// bytes their file holds as Used, and are zeroed by punching holes.
	// Otherwise, like a linear LV on reused extents, the space a volume
	// gains (at create, apart from its first 4 KiB, which lvcreate -Zy
	// zeroes, and when it grows) holds stale bytes.
	Thin bool
	// BlockSize is the loop devices' logical block size (512 when zero;
	// 4096 exercises callers' partial-block handling).
	BlockSize int
	// MaxName is the longest file name CheckName accepts (DefaultMaxName
	// when zero).
	MaxName int
	Log     *slog.Logger
}

// Op names an operation for SetFault and Calls.
type Op string

// The operations. OpRemove is also the removal of the replaced volume at
// the end of a Replace, so a fault there exercises Replace's rollback.
const (
	OpCreate   Op = "create"
	OpOpen     Op = "open"
	OpSetAttrs Op = "setattrs"
	OpResize   Op = "resize"
	OpRemove   Op = "remove"
	OpRename   Op = "rename"
	OpDetach   Op = "detach"
	OpReattach Op = "reattach"
	OpPurge    Op = "purge"
	OpZero     Op = "zero"
	OpFlush    Op = "flush"
)

// Driver is the loop-device driver. It is safe for concurrent use.
type Driver struct {
	cfg Config
	log *slog.Logger

	// mu serializes every operation; fields below are guarded by it.
	mu       sync.Mutex
	files    map[string]*entry // by file name
	detached map[string]*entry // by token (Detach, and Replace's aside volume)
	fault    func(op Op, name string) error
	calls    map[Op]int
	closed   bool
}

// entry is one volume.
type entry struct {
	id    string
	attrs meta.Attrs
	dev   string // its loop device, "" once detached from it (Close)
}

var (
	_ volmap.Driver        = (*Driver)(nil)
	_ volmap.Creator       = (*Driver)(nil)
	_ volmap.Remover       = (*Driver)(nil)
	_ volmap.Renamer       = (*Driver)(nil)
	_ volmap.Replacer      = (*Driver)(nil)
	_ volmap.Resizer       = (*Driver)(nil)
	_ volmap.Detacher      = (*Driver)(nil)
	_ volmap.NameChecker   = (*Driver)(nil)
	_ volmap.SpaceReporter = (*Driver)(nil)
	_ volmap.Flusher       = (*Driver)(nil)
	_ volmap.Zeroer        = Zeroing{}
)

// New opens (or starts) the state in cfg.Dir and attaches a loop device to
// every volume. Volumes detached by a previous driver that did not purge
// them (it stopped first) are removed now, and so are image files no index
// entry names (a crash between steps). Call Close to detach the loop
// devices.
func New(cfg Config) (*Driver, error) {
	if cfg.Dir == "" {
		return nil, errors.New("loopdir: no directory given")
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.Extent == 0 {
		cfg.Extent = DefaultExtent
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 512
	}
	if cfg.MaxName == 0 {
		cfg.MaxName = DefaultMaxName
	}
	if cfg.Extent < 4096 || cfg.Extent%4096 != 0 || cfg.Capacity < cfg.Extent {
		return nil, fmt.Errorf("loopdir: extent %d must be a multiple of 4096 no larger than the capacity %d", cfg.Extent, cfg.Capacity)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "images"), 0o700); err != nil {
		return nil, fmt.Errorf("loopdir: %w", err)
	}
	d := &Driver{cfg: cfg, log: cfg.Log.With(slog.String("dir", cfg.Dir)),
		files: map[string]*entry{}, detached: map[string]*entry{}, calls: map[Op]int{}}
	if err := d.load(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for token, e := range d.detached {
		d.log.Info("removing the volume of a file deleted while open", slog.String("token", token))
		delete(d.detached, token)
		d.destroy(e)
	}
	known := map[string]bool{}
	for name, e := range d.files {
		known[e.id+".img"] = true
		dev, err := attach(d.image(e.id), cfg.BlockSize)
		if err != nil {
			d.closeLocked()
			return nil, fmt.Errorf("loopdir: volume %q: %w", name, err)
		}
		e.dev = dev
	}
	ents, err := os.ReadDir(filepath.Join(cfg.Dir, "images"))
	if err != nil {
		d.closeLocked()
		return nil, fmt.Errorf("loopdir: %w", err)
	}
	for _, ent := range ents {
		if !known[ent.Name()] {
			d.log.Warn("removing an image no volume names (left by a crash)", slog.String("file", ent.Name()))
			os.Remove(filepath.Join(cfg.Dir, "images", ent.Name()))
		}
	}
	if err := d.persistLocked(); err != nil {
		d.closeLocked()
		return nil, err
	}
	return d, nil
}

// Close detaches the loop devices (a device still open is detached by the
// kernel at its last close). The state stays in Dir.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closeLocked()
}

func (d *Driver) closeLocked() error {
	d.closed = true
	var errs []error
	for _, m := range []map[string]*entry{d.files, d.detached} {
		for _, e := range m {
			if e.dev != "" {
				errs = append(errs, detachLoop(e.dev))
				e.dev = ""
			}
		}
	}
	return errors.Join(errs...)
}

// SetFault makes every later operation call f first (with the operation
// and the file name, or the token for Reattach and Purge); an error from
// f fails the operation before it changes anything. nil removes it.
func (d *Driver) SetFault(f func(op Op, name string) error) {
	d.mu.Lock()
	d.fault = f
	d.mu.Unlock()
}

// Calls reports how many times op succeeded.
func (d *Driver) Calls(op Op) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[op]
}

// Device returns the loop device of the file name ("" if none): tests hold
// it open as another program would.
func (d *Driver) Device(name string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e := d.files[name]; e != nil {
		return e.dev
	}
	return ""
}

// Detached lists the tokens of detached volumes (removed files still
// open, and Replace's aside volume while it runs).
func (d *Driver) Detached() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for t := range d.detached {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// begin starts an operation: the driver must be open and the fault hook,
// if any, agree.
func (d *Driver) begin(op Op, name string) error {
	if d.closed {
		return fmt.Errorf("loopdir %s %q: driver closed", op, name)
	}
	if d.fault != nil {
		if err := d.fault(op, name); err != nil {
			return fmt.Errorf("loopdir %s %q (injected): %w", op, name, err)
		}
	}
	return nil
}

func (d *Driver) done(op Op) { d.calls[op]++ }

func (d *Driver) image(id string) string { return filepath.Join(d.cfg.Dir, "images", id+".img") }

// roundUp is size in whole extents, at least one.
func (d *Driver) roundUp(size int64) (int64, error) {
	if size <= 0 {
		return d.cfg.Extent, nil
	}
	n := (size + d.cfg.Extent - 1) / d.cfg.Extent
	if size > d.cfg.Capacity || n*d.cfg.Extent > d.cfg.Capacity {
		return 0, fmt.Errorf("%d bytes: more than the pool's %d: %w", size, d.cfg.Capacity, volmap.ErrNoSpace)
	}
	return n * d.cfg.Extent, nil
}

// CheckName accepts any file name but "", ".", "..", names with '/' or
// NUL, and names longer than Config.MaxName bytes.
func (d *Driver) CheckName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%w: %q", volmap.ErrInvalidName, name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%w: %q contains '/' or NUL", volmap.ErrInvalidName, name)
	case len(name) > d.cfg.MaxName:
		return fmt.Errorf("%w: %q is %d bytes, the limit is %d", volmap.ErrNameTooLong, name, len(name), d.cfg.MaxName)
	}
	return nil
}

// volumeLocked describes a volume from its image file.
func (d *Driver) volumeLocked(name string, e *entry) (volmap.Volume, error) {
	st, err := os.Stat(d.image(e.id))
	if err != nil {
		return volmap.Volume{}, fmt.Errorf("volume %q: %w", name, err)
	}
	v := volmap.Volume{Name: name, ID: e.id, Size: st.Size(), Used: -1, Thin: d.cfg.Thin, Attrs: e.attrs.Clone()}
	if d.cfg.Thin {
		v.Used = st.Sys().(*syscall.Stat_t).Blocks * 512
	}
	return v, nil
}

// usedLocked is what the volumes take of the pool.
func (d *Driver) usedLocked() int64 {
	var used int64
	for _, m := range []map[string]*entry{d.files, d.detached} {
		for _, e := range m {
			if st, err := os.Stat(d.image(e.id)); err == nil {
				used += st.Size()
			}
		}
	}
	return used
}

func (d *Driver) file(name string) (*entry, error) {
	e := d.files[name]
	if e == nil {
		return nil, fmt.Errorf("%q: %w", name, volmap.ErrNotFound)
	}
	return e, nil
}

// List returns every volume, sorted by name.
func (d *Driver) List(ctx context.Context) ([]volmap.Volume, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]volmap.Volume, 0, len(d.files))
	for name, e := range d.files {
		v, err := d.volumeLocked(name, e)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Lookup returns one volume.
func (d *Driver) Lookup(ctx context.Context, name string) (volmap.Volume, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.file(name)
	if err != nil {
		return volmap.Volume{}, err
	}
	return d.volumeLocked(name, e)
}

// Open opens the volume's loop device, after checking that the device
// still has the volume's image behind it (another program could have
// detached it and attached something else).
func (d *Driver) Open(ctx context.Context, name string, flag int) (*os.File, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.file(name)
	if err != nil {
		return nil, err
	}
	if err := d.begin(OpOpen, name); err != nil {
		return nil, err
	}
	f, err := openLoop(e.dev, d.image(e.id), flag&^(os.O_CREATE|os.O_TRUNC|os.O_EXCL))
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", name, err)
	}
	d.done(OpOpen)
	return f, nil
}

// SetAttrs stores a volume's attributes in the index.
func (d *Driver) SetAttrs(ctx context.Context, name string, a meta.Attrs) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.file(name)
	if err != nil {
		return err
	}
	if err := d.begin(OpSetAttrs, name); err != nil {
		return err
	}
	old := e.attrs
	e.attrs = a.Clone()
	if err := d.persistLocked(); err != nil {
		e.attrs = old
		return err
	}
	d.done(OpSetAttrs)
	return nil
}

// Create makes a volume of size bytes rounded up to whole extents.
func (d *Driver) Create(ctx context.Context, name string, size int64, a meta.Attrs) (volmap.Volume, error) {
	if err := d.CheckName(name); err != nil {
		return volmap.Volume{}, err
	}
	bytes, err := d.roundUp(size)
	if err != nil {
		return volmap.Volume{}, fmt.Errorf("create %q: %w", name, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.files[name] != nil {
		return volmap.Volume{}, fmt.Errorf("create %q: %w", name, volmap.ErrExists)
	}
	if err := d.begin(OpCreate, name); err != nil {
		return volmap.Volume{}, err
	}
	if free := d.cfg.Capacity - d.usedLocked(); bytes > free {
		return volmap.Volume{}, fmt.Errorf("create %q of %d bytes: %d free: %w", name, bytes, free, volmap.ErrNoSpace)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	e := &entry{id: hex.EncodeToString(rnd[:]), attrs: a.Clone()}
	path := d.image(e.id)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return volmap.Volume{}, fmt.Errorf("create %q: %w", name, err)
	}
	err = f.Truncate(bytes)
	f.Close()
	if err == nil {
		e.dev, err = attach(path, d.cfg.BlockSize)
	}
	if err == nil && !d.cfg.Thin {
		err = stale(e.dev, 4096, bytes)
	}
	if err == nil {
		d.files[name] = e
		if err = d.persistLocked(); err != nil {
			delete(d.files, name)
		}
	}
	if err != nil {
		d.destroy(e)
		return volmap.Volume{}, fmt.Errorf("create %q: %w", name, err)
	}
	d.done(OpCreate)
	d.log.Debug("created", slog.String("volume", name), slog.String("dev", e.dev), slog.Int64("size", bytes))
	return d.volumeLocked(name, e)
}

// destroy detaches a volume's loop device and removes its image.
func (d *Driver) destroy(e *entry) {
	if e.dev != "" {
		if err := detachLoop(e.dev); err != nil {
			d.log.Warn("detaching a loop device failed", slog.String("dev", e.dev), slog.Any("err", err))
		}
		e.dev = ""
	}
	if err := os.Remove(d.image(e.id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		d.log.Warn("removing an image failed", slog.String("id", e.id), slog.Any("err", err))
	}
}

// inUseLocked fails with ErrInUse when something holds the volume's loop
// device; self says whether this process's own fds count (they do for
// Remove and Purge, as for lvremove; not for Detach).
func (d *Driver) inUseLocked(name string, e *entry, self bool) error {
	if e.dev == "" {
		return nil
	}
	var who []string
	// A udev probe after a change opens the device for a moment: look
	// again before calling it held.
	for try := 0; try < 4; try++ {
		if try > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		var err error
		if who, err = holders.Find(e.dev, self); err != nil || len(who) == 0 {
			return nil
		}
	}
	return fmt.Errorf("%q (%s) is open: %s: %w", name, e.dev, strings.Join(who, "; "), volmap.ErrInUse)
}

// Remove removes a volume that nothing holds open.
func (d *Driver) Remove(ctx context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.file(name)
	if err != nil {
		return err
	}
	if err := d.begin(OpRemove, name); err != nil {
		return err
	}
	if err := d.inUseLocked(name, e, true); err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	delete(d.files, name)
	if err := d.persistLocked(); err != nil {
		d.files[name] = e
		return err
	}
	d.destroy(e)
	d.done(OpRemove)
	return nil
}

// Rename renames a volume; ErrExists when newName exists.
func (d *Driver) Rename(ctx context.Context, oldName, newName string) error {
	if err := d.CheckName(newName); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.file(oldName)
	if err != nil {
		return err
	}
	if oldName == newName {
		return nil
	}
	if d.files[newName] != nil {
		return fmt.Errorf("rename %q to %q: %w", oldName, newName, volmap.ErrExists)
	}
	if err := d.begin(OpRename, oldName); err != nil {
		return err
	}
	delete(d.files, oldName)
	d.files[newName] = e
	if err := d.persistLocked(); err != nil {
		delete(d.files, newName)
		d.files[oldName] = e
		return err
	}
	d.done(OpRename)
	return nil
}

// Replace renames oldName over newName in LVM's three steps (move the
// target aside, rename, remove the target), each a change of the
// in-memory index, written once at the end; if the target cannot be
// removed (held open: ErrInUse, or an injected OpRemove fault) the first
// two steps are undone.
func (d *Driver) Replace(ctx context.Context, oldName, newName string) error {
	if err := d.CheckName(newName); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	src, err := d.file(oldName)
	if err != nil {
		return err
	}
	dst := d.files[newName]
	if dst == src {
		return nil
	}
	if err := d.begin(OpRename, oldName); err != nil {
		return err
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	aside := "aside-" + hex.EncodeToString(rnd[:])
	if dst != nil {
		d.detached[aside] = dst
	}
	delete(d.files, oldName)
	d.files[newName] = src
	undo := func() {
		d.files[oldName] = src
		if dst != nil {
			d.files[newName] = dst
			delete(d.detached, aside)
		} else {
			delete(d.files, newName)
		}
	}
	if dst != nil {
		err := d.begin(OpRemove, newName)
		if err == nil {
			err = d.inUseLocked(newName, dst, true)
		}
		if err != nil {
			undo()
			return fmt.Errorf("replace %q with %q: remove the replaced volume: %w", newName, oldName, err)
		}
		delete(d.detached, aside)
	}
	if err := d.persistLocked(); err != nil {
		undo()
		return err
	}
	if dst != nil {
		d.destroy(dst)
		d.done(OpRemove)
	}
	d.done(OpRename)
	return nil
}

// Resize makes a volume size bytes, rounded up to whole extents.
func (d *Driver) Resize(ctx context.Context, name string, size int64) (int64, error) {
	target, err := d.roundUp(size)
	if err != nil {
		return 0, fmt.Errorf("resize %q: %w", name, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.file(name)
	if err != nil {
		return 0, err
	}
	st, err := os.Stat(d.image(e.id))
	if err != nil {
		return 0, fmt.Errorf("resize %q: %w", name, err)
	}
	cur := st.Size()
	if target == cur {
		return target, nil
	}
	if err := d.begin(OpResize, name); err != nil {
		return 0, err
	}
	if free := d.cfg.Capacity - d.usedLocked(); target-cur > free {
		return 0, fmt.Errorf("resize %q from %d to %d bytes: %d free: %w", name, cur, target, free, volmap.ErrNoSpace)
	}
	if err := os.Truncate(d.image(e.id), target); err != nil {
		return 0, fmt.Errorf("resize %q: %w", name, err)
	}
	if err := setCapacity(e.dev, target); err != nil {
		_ = os.Truncate(d.image(e.id), cur)
		_ = setCapacity(e.dev, cur)
		return 0, fmt.Errorf("resize %q: %w", name, err)
	}
	if target > cur && !d.cfg.Thin {
		if err := stale(e.dev, cur, target); err != nil {
			return 0, fmt.Errorf("resize %q: %w", name, err)
		}
	}
	d.done(OpResize)
	return target, nil
}

// Detach hides a volume that only this process holds: the name is free,
// the loop device stays until Purge.
func (d *Driver) Detach(ctx context.Context, name string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.file(name)
	if err != nil {
		return "", err
	}
	if err := d.begin(OpDetach, name); err != nil {
		return "", err
	}
	if err := d.inUseLocked(name, e, false); err != nil {
		return "", fmt.Errorf("remove while open: %w", err)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	token := "deleted-" + hex.EncodeToString(rnd[:])
	delete(d.files, name)
	d.detached[token] = e
	if err := d.persistLocked(); err != nil {
		delete(d.detached, token)
		d.files[name] = e
		return "", err
	}
	d.done(OpDetach)
	return token, nil
}

func (d *Driver) detachedEntry(op Op, token string) (*entry, error) {
	e := d.detached[token]
	if e == nil || !strings.HasPrefix(token, "deleted-") {
		return nil, fmt.Errorf("%s %q: %w: not a detached volume", op, token, volmap.ErrInvalidName)
	}
	return e, nil
}

// Reattach puts a detached volume back under name.
func (d *Driver) Reattach(ctx context.Context, token, name string) error {
	if err := d.CheckName(name); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.detachedEntry(OpReattach, token)
	if err != nil {
		return err
	}
	if d.files[name] != nil {
		return fmt.Errorf("reattach %q: %w", name, volmap.ErrExists)
	}
	if err := d.begin(OpReattach, token); err != nil {
		return err
	}
	delete(d.detached, token)
	d.files[name] = e
	if err := d.persistLocked(); err != nil {
		delete(d.files, name)
		d.detached[token] = e
		return err
	}
	d.done(OpReattach)
	return nil
}

// Purge destroys a detached volume once nothing holds it.
func (d *Driver) Purge(ctx context.Context, token string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.detachedEntry(OpPurge, token)
	if err != nil {
		return err
	}
	if err := d.begin(OpPurge, token); err != nil {
		return err
	}
	if err := d.inUseLocked(token, e, true); err != nil {
		return fmt.Errorf("purge: %w", err)
	}
	delete(d.detached, token)
	if err := d.persistLocked(); err != nil {
		d.detached[token] = e
		return err
	}
	d.destroy(e)
	d.done(OpPurge)
	return nil
}

// Space reports the pool: its capacity, and what the volumes leave of it.
func (d *Driver) Space(ctx context.Context) (volmap.Space, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return volmap.Space{Total: d.cfg.Capacity, Free: max(d.cfg.Capacity-d.usedLocked(), 0)}, nil
}

// Flush writes the index out again and syncs the directory.
func (d *Driver) Flush(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(OpFlush, ""); err != nil {
		return err
	}
	if err := d.persistLocked(); err != nil {
		return err
	}
	d.done(OpFlush)
	return nil
}

// record is one volume in index.json. Name is bytes: a file name may be
// any bytes but '/' and NUL, and JSON strings hold only UTF-8.
type record struct {
	Name  []byte     `json:"name,omitempty"`
	Token string     `json:"token,omitempty"`
	ID    string     `json:"id"`
	Attrs meta.Attrs `json:"attrs"`
}

func (d *Driver) indexPath() string { return filepath.Join(d.cfg.Dir, "index.json") }

func (d *Driver) load() error {
	b, err := os.ReadFile(d.indexPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("loopdir: %w", err)
	}
	var recs []record
	if err := json.Unmarshal(b, &recs); err != nil {
		return fmt.Errorf("loopdir: %s: %w", d.indexPath(), err)
	}
	for _, r := range recs {
		e := &entry{id: r.ID, attrs: r.Attrs}
		if r.Token != "" {
			d.detached[r.Token] = e
		} else {
			d.files[string(r.Name)] = e
		}
	}
	return nil
}

// persistLocked writes index.json atomically (temporary file, fsync,
// rename, fsync of the directory).
func (d *Driver) persistLocked() error {
	recs := make([]record, 0, len(d.files)+len(d.detached))
	for name, e := range d.files {
		recs = append(recs, record{Name: []byte(name), ID: e.id, Attrs: e.attrs})
	}
	for token, e := range d.detached {
		recs = append(recs, record{Token: token, ID: e.id, Attrs: e.attrs})
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	b, err := json.Marshal(recs)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(d.cfg.Dir, ".index-*")
	if err != nil {
		return fmt.Errorf("loopdir: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), d.indexPath())
	}
	if err == nil {
		var dir *os.File
		if dir, err = os.Open(d.cfg.Dir); err == nil {
			err = dir.Sync()
			dir.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("loopdir: write %s: %w", d.indexPath(), err)
	}
	return nil
}
