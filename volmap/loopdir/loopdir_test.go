package loopdir_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
	"github.com/volfs/volfs/volmap/loopdir"
	"github.com/volfs/volfs/volmap/volmaptest"
)

func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  loopdir.Config
	}{
		{"linear", loopdir.Config{}},
		{"thin", loopdir.Config{Thin: true, BlockSize: 4096}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newDriver(t, c.cfg)
			volmaptest.Run(t, loopdir.Zeroing{Driver: d}, volmaptest.Options{})
		})
	}
}

// newDriver makes a driver over a scratch directory in /dev/shm; its loop
// devices are detached and the directory removed when the test ends.
func newDriver(t *testing.T, cfg loopdir.Config) *loopdir.Driver {
	t.Helper()
	testutil.RequireRoot(t)
	if cfg.Dir == "" {
		cfg.Dir = testutil.ScratchDir(t)
	}
	d, err := loopdir.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

// A second driver over the same directory finds the volumes with their
// attributes, and removes what a stopped one left detached and images no
// volume names.
func TestReopen(t *testing.T) {
	testutil.RequireRoot(t)
	dir := testutil.ScratchDir(t)
	ctx := context.Background()
	d, err := loopdir.New(loopdir.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	a := meta.Attrs{Mode: 0o640, UID: 7, Size: 1234, Mtime: time.Unix(1700000000, 5), Xattrs: map[string][]byte{"user.k": {0, 1}}}
	v, err := d.Create(ctx, "kept \xff", 1, a)
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	if _, err := d.Create(ctx, "gone", 1, meta.Attrs{Size: -1}); err != nil {
		d.Close()
		t.Fatal(err)
	}
	if _, err := d.Detach(ctx, "gone"); err != nil {
		d.Close()
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "images", "orphan.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d = newDriver(t, loopdir.Config{Dir: dir})
	vols, err := d.List(ctx)
	if err != nil || len(vols) != 1 || vols[0].Name != "kept \xff" || vols[0].ID != v.ID || !vols[0].Attrs.Equal(a) {
		t.Fatalf("List after reopening = %+v, %v", vols, err)
	}
	if tokens := d.Detached(); len(tokens) != 0 {
		t.Fatalf("detached volumes after reopening: %v", tokens)
	}
	imgs, _ := filepath.Glob(filepath.Join(dir, "images", "*"))
	if len(imgs) != 1 {
		t.Fatalf("images after reopening: %v", imgs)
	}
}

// Without Thin, the space a volume gains holds stale bytes, as a linear
// LV's reused extents do; with Thin it reads as zeros.
func TestStaleExtents(t *testing.T) {
	ctx := context.Background()
	for _, thin := range []bool{false, true} {
		d := newDriver(t, loopdir.Config{Thin: thin, Extent: 1 << 20})
		if _, err := d.Create(ctx, "v", 1, meta.Attrs{Size: -1}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Resize(ctx, "v", 3<<20); err != nil {
			t.Fatal(err)
		}
		f, err := d.Open(ctx, "v", os.O_RDONLY)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 3<<20)
		_, err = f.ReadAt(b, 0)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		first, grown := bytes.Count(b[:4096], []byte{loopdir.StaleByte}), bytes.Count(b[1<<20:], []byte{loopdir.StaleByte})
		if first != 0 || thin != (grown == 0) {
			t.Fatalf("thin %v: %d stale bytes in the first block, %d in the grown part", thin, first, grown)
		}
	}
}

// An injected fault fails the operation before it changes anything.
func TestFault(t *testing.T) {
	ctx := context.Background()
	d := newDriver(t, loopdir.Config{})
	if _, err := d.Create(ctx, "v", 1, meta.Attrs{Size: -1}); err != nil {
		t.Fatal(err)
	}
	d.SetFault(func(op loopdir.Op, name string) error {
		if op == loopdir.OpResize && name == "v" {
			return volmap.ErrNoSpace
		}
		return nil
	})
	if _, err := d.Resize(ctx, "v", 8<<20); !errors.Is(err, volmap.ErrNoSpace) {
		t.Fatalf("Resize with an injected fault: %v", err)
	}
	if v, _ := d.Lookup(ctx, "v"); v.Size != loopdir.DefaultExtent {
		t.Fatalf("size after a failed Resize: %d", v.Size)
	}
	d.SetFault(nil)
	if _, err := d.Resize(ctx, "v", 8<<20); err != nil {
		t.Fatal(err)
	}
	if n := d.Calls(loopdir.OpResize); n != 1 {
		t.Fatalf("Calls(OpResize) = %d", n)
	}
}
