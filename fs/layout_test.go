package fs

import (
	"context"
	"errors"
	"os"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
	"github.com/volfs/volfs/volmap/loopdir"
)

// layoutDriver gives loopdir the Layouter capability, recording the
// layout each volume was created with or converted to, over two "PVs":
// it lets the fs side of trusted.volfs.layout run on any machine (the
// guest tests in integration/lvm prove it on LVM).
type layoutDriver struct {
	*loopdir.Driver
	mu       sync.Mutex
	layouts  map[string]volmap.Layout
	converts int
}

func newLayoutDriver(d *loopdir.Driver) *layoutDriver {
	return &layoutDriver{Driver: d, layouts: map[string]volmap.Layout{}}
}

var _ volmap.Layouter = (*layoutDriver)(nil)

func (d *layoutDriver) DefaultLayout() volmap.Layout { return volmap.Layout{Type: "linear"} }

func (d *layoutDriver) CheckLayout(ctx context.Context, l volmap.Layout) error {
	if err := l.Check(); err != nil {
		return err
	}
	if l.PVs() > 2 {
		return errors.Join(errors.New("needs more than 2 PVs"), volmap.ErrLayout)
	}
	return nil
}

func (d *layoutDriver) CreateLayout(ctx context.Context, name string, size int64, a meta.Attrs, l volmap.Layout) (volmap.Volume, error) {
	if err := d.CheckLayout(ctx, l); err != nil {
		return volmap.Volume{}, err
	}
	v, err := d.Driver.Create(ctx, name, size, a)
	if err == nil {
		d.mu.Lock()
		d.layouts[name] = l
		d.mu.Unlock()
		v.Layout = l
	}
	return v, err
}

func (d *layoutDriver) Convert(ctx context.Context, name string, l volmap.Layout) error {
	if err := d.CheckLayout(ctx, l); err != nil {
		return err
	}
	if _, err := d.Driver.Lookup(ctx, name); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.layouts[name] = l
	d.converts++
	return nil
}

func (d *layoutDriver) Lookup(ctx context.Context, name string) (volmap.Volume, error) {
	v, err := d.Driver.Lookup(ctx, name)
	d.mu.Lock()
	defer d.mu.Unlock()
	v.Layout = volmap.Layout{Type: "linear"}
	if l, ok := d.layouts[name]; ok {
		v.Layout = l
	}
	return v, err
}

func (d *layoutDriver) layout(name string) (volmap.Layout, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.layouts[name], d.converts
}

func getxattr(t *testing.T, path, name string) (string, error) {
	t.Helper()
	b := make([]byte, 256)
	n, err := unix.Getxattr(path, name, b)
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// TestLayoutXattr: trusted.volfs.layout shows a pending file's layout to
// be, decides the one its volume is created with, converts an existing
// volume, refuses what the driver refuses with EINVAL, and is not stored
// as an attribute.
func TestLayoutXattr(t *testing.T) {
	m := newTestMount(t, mountConfig{Layouts: true})
	drv := m.root.drv.(*layoutDriver)
	f, err := os.Create(m.path("p"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if v, err := getxattr(t, m.path("p"), meta.LayoutXattr); err != nil || v != "linear" {
		t.Errorf("layout of a new file: %q, %v; want linear", v, err)
	}
	for _, bad := range []string{"raid1 mirrors=2", "raid7", ""} {
		if err := unix.Setxattr(m.path("p"), meta.LayoutXattr, []byte(bad), 0); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("set layout %q: %v, want EINVAL", bad, err)
		}
	}
	if err := unix.Setxattr(m.path("p"), meta.LayoutXattr, []byte("raid1"), 0); err != nil {
		t.Fatal(err)
	}
	if v, err := getxattr(t, m.path("p"), meta.LayoutXattr); err != nil || v != "raid1 mirrors=1" {
		t.Errorf("layout of the pending file after set: %q, %v", v, err)
	}
	if _, ok := m.volume("p"); ok {
		t.Fatal("setting the layout created the volume")
	}
	if _, err := f.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if l, _ := drv.layout("p"); l.String() != "raid1 mirrors=1" {
		t.Errorf("volume of p created with layout %q", l)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	v, ok := m.volume("p")
	if !ok {
		t.Fatal("no volume p")
	}
	if _, stored := v.Attrs.Xattrs[meta.LayoutXattr]; stored {
		t.Errorf("%s stored as an attribute: %v", meta.LayoutXattr, v.Attrs.Xattrs)
	}

	// An existing file: converted.
	if err := os.WriteFile(m.path("q"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(m.path("q"), meta.LayoutXattr, []byte("striped stripes=3"), 0); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("convert to 3 stripes on 2 PVs: %v, want EINVAL", err)
	}
	if _, n := drv.layout("q"); n != 0 {
		t.Errorf("a refused conversion reached the driver")
	}
	if err := unix.Setxattr(m.path("q"), meta.LayoutXattr, []byte("striped stripes=2"), 0); err != nil {
		t.Fatal(err)
	}
	if l, n := drv.layout("q"); l.String() != "striped stripes=2" || n != 1 {
		t.Errorf("q converted to %q (%d conversions)", l, n)
	}
	if v, err := getxattr(t, m.path("q"), meta.LayoutXattr); err != nil || v != "striped stripes=2" {
		t.Errorf("layout of q after conversion: %q, %v", v, err)
	}
	if err := unix.Removexattr(m.path("q"), meta.LayoutXattr); !errors.Is(err, syscall.EPERM) {
		t.Errorf("remove %s: %v, want EPERM", meta.LayoutXattr, err)
	}
	b := make([]byte, 4096)
	n, err := unix.Listxattr(m.path("q"), b)
	if err != nil || !containsName(b[:n], meta.LayoutXattr) {
		t.Errorf("listxattr (as root): %q, %v; want %s listed", b[:n], err, meta.LayoutXattr)
	}
}

func containsName(list []byte, name string) bool {
	for len(list) > 0 {
		i := 0
		for i < len(list) && list[i] != 0 {
			i++
		}
		if string(list[:i]) == name {
			return true
		}
		list = list[min(i+1, len(list)):]
	}
	return false
}
