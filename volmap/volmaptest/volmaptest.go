// Package volmaptest is the conformance suite every volmap.Driver passes:
// the core (list, lookup, open, attributes) always, and each optional
// capability the driver implements. It runs against real devices; the
// caller provides the driver and what exists.
package volmaptest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// Options describe the driver under test.
type Options struct {
	// Existing names volumes that exist when Run starts (at least one for
	// drivers that cannot create volumes). Their first MiB may be
	// overwritten and is restored.
	Existing []string
	// NewName returns a file name that no volume has yet (drivers with
	// Creator); defaults to "volmaptest-N".
	NewName func() string
}

// Run runs the suite.
func Run(t *testing.T, d volmap.Driver, o Options) {
	ctx := context.Background()
	if o.NewName == nil {
		n := 0
		o.NewName = func() string { n++; return "volmaptest-" + strconv.Itoa(n) }
	}
	names := append([]string(nil), o.Existing...)
	if cr, ok := d.(volmap.Creator); ok {
		name := o.NewName()
		v, err := cr.Create(ctx, name, 8<<20, meta.Attrs{Mode: 0o600, Size: -1})
		if err != nil {
			t.Fatalf("Create(%q): %v", name, err)
		}
		if v.Name != name || v.Size < 8<<20 {
			t.Fatalf("Create(%q) = %+v, want that name and >= 8 MiB", name, v)
		}
		t.Cleanup(func() {
			if rm, ok := d.(volmap.Remover); ok {
				_ = rm.Remove(ctx, name)
			}
		})
		names = append(names, name)
	}
	if len(names) == 0 {
		t.Fatal("volmaptest needs an existing volume or a driver that creates them")
	}
	t.Run("List", func(t *testing.T) { testList(t, ctx, d, names) })
	t.Run("LookupMissing", func(t *testing.T) { testLookupMissing(t, ctx, d) })
	t.Run("OpenReadWrite", func(t *testing.T) { testOpen(t, ctx, d, names[0]) })
	t.Run("Attrs", func(t *testing.T) { testAttrs(t, ctx, d, names[0]) })
	if _, ok := d.(volmap.Creator); ok {
		t.Run("Lifecycle", func(t *testing.T) { testLifecycle(t, ctx, d, o.NewName) })
	}
	s := &suite{d: d, ctx: ctx, newName: o.NewName, existing: names[0]}
	for _, c := range []struct {
		name  string
		needs []capability
		test  func(*testing.T)
	}{
		{"Names", []capability{checker, creator, remover}, s.testNames},
		{"Space", []capability{space}, s.testSpace},
		{"Resize", []capability{creator, resizer}, s.testResize},
		{"RemoveInUse", []capability{creator, remover}, s.testRemoveInUse},
		{"Replace", []capability{creator, replacer}, s.testReplace},
		{"ReplaceInUse", []capability{creator, replacer}, s.testReplaceInUse},
		{"Detach", []capability{creator, remover, detacher}, s.testDetach},
		{"Zero", []capability{zeroer}, s.testZero},
		{"Flush", []capability{flusher}, s.testFlush},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, need := range c.needs {
				if !need.has(d) {
					t.Skipf("the driver is no %s", need.name)
				}
			}
			c.test(t)
		})
	}
}

func testList(t *testing.T, ctx context.Context, d volmap.Driver, names []string) {
	vols, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]volmap.Volume{}
	ids := map[string]string{}
	for _, v := range vols {
		if _, dup := byName[v.Name]; dup {
			t.Errorf("List returns %q twice", v.Name)
		}
		if other, dup := ids[v.ID]; dup {
			t.Errorf("volumes %q and %q share the ID %q", v.Name, other, v.ID)
		}
		byName[v.Name], ids[v.ID] = v, v.Name
		if v.ID == "" || v.Size <= 0 {
			t.Errorf("volume %+v: empty ID or size", v)
		}
	}
	for _, n := range names {
		v, ok := byName[n]
		if !ok {
			t.Errorf("List does not return %q", n)
			continue
		}
		w, err := d.Lookup(ctx, n)
		if err != nil {
			t.Errorf("Lookup(%q): %v", n, err)
			continue
		}
		if w.ID != v.ID || w.Size != v.Size {
			t.Errorf("Lookup(%q) = %+v, List said %+v", n, w, v)
		}
	}
}

func testLookupMissing(t *testing.T, ctx context.Context, d volmap.Driver) {
	for _, n := range []string{"volmaptest-missing", "../etc", "a/b", ".", ""} {
		_, err := d.Lookup(ctx, n)
		if err == nil {
			t.Errorf("Lookup(%q) succeeded", n)
		} else if !errors.Is(err, volmap.ErrNotFound) && !errors.Is(err, volmap.ErrInvalidName) {
			t.Errorf("Lookup(%q) = %v, want ErrNotFound or ErrInvalidName", n, err)
		}
		if f, err := d.Open(ctx, n, os.O_RDONLY); err == nil {
			f.Close()
			t.Errorf("Open(%q) succeeded", n)
		}
	}
}

func testOpen(t *testing.T, ctx context.Context, d volmap.Driver, name string) {
	v, err := d.Lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	f, err := d.Open(ctx, name, os.O_RDWR|syscall.O_DIRECT)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := volmap.DeviceSize(f)
	if err != nil || size != v.Size {
		t.Fatalf("device size %d (%v), volume says %d", size, err, v.Size)
	}
	bs, err := volmap.LogicalBlockSize(f)
	if err != nil || bs < 512 {
		t.Fatalf("logical block size %d (%v)", bs, err)
	}
	n := min(int64(1<<20), v.Size)
	orig := alignedBuf(int(n))
	if _, err := f.ReadAt(orig, 0); err != nil {
		t.Fatal(err)
	}
	defer f.WriteAt(orig, 0)
	data := alignedBuf(int(n))
	_, _ = rand.Read(data)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	g, err := d.Open(ctx, name, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	back := make([]byte, n)
	if _, err := g.ReadAt(back, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("data written through one fd differs when read through another")
	}
}

func testAttrs(t *testing.T, ctx context.Context, d volmap.Driver, name string) {
	v, err := d.Lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer d.SetAttrs(ctx, name, v.Attrs)
	want := v.Attrs.Clone()
	want.Mode, want.UID, want.GID = 0o640, 107, 108
	want.Mtime = time.Unix(1700000000, 123456789)
	want.Ctime = time.Unix(1700000001, 0)
	want.Xattrs = map[string][]byte{"user.volmaptest": []byte("value\x00with=odd+bytes")}
	if err := d.SetAttrs(ctx, name, want); err != nil {
		t.Fatal(err)
	}
	got, err := d.Lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	got.Attrs.Size, want.Size = 0, 0 // drivers may drop a size equal to the device's
	if !got.Attrs.Equal(want) {
		t.Fatalf("attributes after SetAttrs:\n got %+v\nwant %+v", got.Attrs, want)
	}
}

func testLifecycle(t *testing.T, ctx context.Context, d volmap.Driver, newName func() string) {
	cr := d.(volmap.Creator)
	name := newName()
	v, err := cr.Create(ctx, name, 4<<20, meta.Attrs{Mode: 0o644, Size: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cr.Create(ctx, name, 4<<20, meta.Attrs{Size: -1}); !errors.Is(err, volmap.ErrExists) {
		t.Errorf("second Create(%q) = %v, want ErrExists", name, err)
	}
	if got, err := d.Lookup(ctx, name); err != nil || got.Attrs.Size != 1000 || got.Attrs.Mode != 0o644 {
		t.Errorf("Lookup after Create = %+v, %v; want mode 0644, size 1000", got, err)
	}
	if rs, ok := d.(volmap.Resizer); ok {
		size, err := rs.Resize(ctx, name, v.Size*2)
		if err != nil || size < v.Size*2 {
			t.Errorf("Resize to %d = %d, %v", v.Size*2, size, err)
		}
		if got, _ := d.Lookup(ctx, name); got.Size != size {
			t.Errorf("Lookup after Resize: size %d, Resize said %d", got.Size, size)
		}
	}
	if rn, ok := d.(volmap.Renamer); ok {
		to := newName()
		if err := rn.Rename(ctx, name, to); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Lookup(ctx, name); !errors.Is(err, volmap.ErrNotFound) {
			t.Errorf("old name after Rename: %v, want ErrNotFound", err)
		}
		got, err := d.Lookup(ctx, to)
		if err != nil || got.ID != v.ID {
			t.Errorf("new name after Rename: %+v, %v; want ID %q", got, err, v.ID)
		}
		name = to
	}
	if rm, ok := d.(volmap.Remover); ok {
		if err := rm.Remove(ctx, name); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Lookup(ctx, name); !errors.Is(err, volmap.ErrNotFound) {
			t.Errorf("Lookup after Remove: %v, want ErrNotFound", err)
		}
	}
}

func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := 0
	for uintptrOf(b[off:])%4096 != 0 {
		off++
	}
	return b[off : off+n]
}
