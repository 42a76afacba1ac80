package volmaptest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// capability is an optional interface a test needs.
type capability struct {
	name string
	has  func(volmap.Driver) bool
}

func is[T any](d volmap.Driver) bool { _, ok := d.(T); return ok }

var (
	creator  = capability{"Creator", is[volmap.Creator]}
	remover  = capability{"Remover", is[volmap.Remover]}
	resizer  = capability{"Resizer", is[volmap.Resizer]}
	replacer = capability{"Replacer", is[volmap.Replacer]}
	detacher = capability{"Detacher", is[volmap.Detacher]}
	zeroer   = capability{"Zeroer", is[volmap.Zeroer]}
	checker  = capability{"NameChecker", is[volmap.NameChecker]}
	space    = capability{"SpaceReporter", is[volmap.SpaceReporter]}
	flusher  = capability{"Flusher", is[volmap.Flusher]}
)

// suite holds what the capability tests share.
type suite struct {
	d        volmap.Driver
	ctx      context.Context
	newName  func() string
	existing string // a volume the tests may write (first MiB restored)
}

const mib = 1 << 20

// create makes a volume of size bytes under a new name, removed when the
// test ends (if it still exists).
func (s *suite) create(t *testing.T, size int64) (string, volmap.Volume) {
	t.Helper()
	name := s.newName()
	v, err := s.d.(volmap.Creator).Create(s.ctx, name, size, meta.Attrs{Mode: 0o600, Size: -1})
	if err != nil {
		t.Fatalf("Create(%q, %d): %v", name, size, err)
	}
	t.Cleanup(func() { s.removeIfThere(name) })
	return name, v
}

func (s *suite) removeIfThere(name string) {
	if rm, ok := s.d.(volmap.Remover); ok {
		_ = rm.Remove(s.ctx, name)
	}
}

// writeAt writes data at off of the volume's device (O_DIRECT: off and
// len(data) are whole 4 KiB blocks).
func (s *suite) writeAt(t *testing.T, name string, data []byte, off int64) {
	t.Helper()
	f, err := s.d.Open(s.ctx, name, os.O_RDWR|syscall.O_DIRECT)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := alignedBuf(len(data))
	copy(b, data)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatalf("write %q: %v", name, err)
	}
}

func (s *suite) readAt(t *testing.T, name string, n int, off int64) []byte {
	t.Helper()
	f, err := s.d.Open(s.ctx, name, os.O_RDONLY|syscall.O_DIRECT)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := alignedBuf(n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %q: %v", name, err)
	}
	return b
}

// pattern is n bytes that differ with seed and with every 4 KiB block.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/4096) ^ byte(i) ^ seed
	}
	return b
}

// holdElsewhere keeps the volume's device open in another process (as a
// VM started on the device would) until the returned function is called
// or the test ends.
func (s *suite) holdElsewhere(t *testing.T, name string) func() {
	t.Helper()
	f, err := s.d.Open(s.ctx, name, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "600")
	cmd.ExtraFiles = []*os.File{f}
	err = cmd.Start()
	f.Close()
	if err != nil {
		t.Fatalf("start a process holding %q: %v", name, err)
	}
	release := func() {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			cmd.Process = nil
		}
	}
	t.Cleanup(release)
	return release
}

func (s *suite) id(t *testing.T, name string) string {
	t.Helper()
	v, err := s.d.Lookup(s.ctx, name)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", name, err)
	}
	return v.ID
}

func (s *suite) listed(t *testing.T) map[string]string {
	t.Helper()
	vols, err := s.d.List(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, v := range vols {
		ids[v.Name] = v.ID
	}
	return ids
}

// Names the driver refuses are refused before anything is created, with
// ErrInvalidName or ErrNameTooLong; odd names it accepts round-trip
// through Create, Lookup and List unchanged.
func (s *suite) testNames(t *testing.T) {
	nc, cr := s.d.(volmap.NameChecker), s.d.(volmap.Creator)
	for name, want := range map[string]error{
		"":                        volmap.ErrInvalidName,
		"a/b":                     volmap.ErrInvalidName,
		"nul\x00byte":             volmap.ErrInvalidName,
		strings.Repeat("n", 4096): volmap.ErrNameTooLong,
	} {
		if err := nc.CheckName(name); !errors.Is(err, want) {
			t.Errorf("CheckName(%.20q) = %v, want %v", name, err, want)
		}
		before := s.listed(t)
		if _, err := cr.Create(s.ctx, name, mib, meta.Attrs{Size: -1}); !errors.Is(err, want) {
			t.Errorf("Create(%.20q) = %v, want %v", name, err, want)
			s.removeIfThere(name)
		}
		if after := s.listed(t); len(after) != len(before) {
			t.Errorf("a refused Create(%.20q) changed the listing: %v", name, after)
		}
	}
	if err := nc.CheckName(s.newName()); err != nil {
		t.Errorf("CheckName of a plain new name: %v", err)
	}
	prefix := s.newName()
	for _, name := range []string{prefix + " web disk:1", "-" + prefix, prefix + "-ü.img", prefix + "_tmeta", "snapshot" + prefix, prefix + "+41"} {
		if err := nc.CheckName(name); err != nil {
			t.Errorf("CheckName(%q): %v", name, err)
			continue
		}
		v, err := cr.Create(s.ctx, name, mib, meta.Attrs{Size: -1})
		if err != nil {
			t.Errorf("Create(%q): %v", name, err)
			continue
		}
		if got, err := s.d.Lookup(s.ctx, name); err != nil || got.Name != name || got.ID != v.ID {
			t.Errorf("Lookup(%q) = %+v, %v", name, got, err)
		}
		if id, ok := s.listed(t)[name]; !ok || id != v.ID {
			t.Errorf("List does not show %q", name)
		}
		if err := s.d.(volmap.Remover).Remove(s.ctx, name); err != nil {
			t.Errorf("Remove(%q): %v", name, err)
		}
	}
}

// Space reports a pool with room in it; a (non-thin) volume made in it
// shows within a few seconds (drivers may cache), and a volume larger than
// what is free is refused with ErrNoSpace and leaves nothing behind.
func (s *suite) testSpace(t *testing.T) {
	sr := s.d.(volmap.SpaceReporter)
	sp, err := sr.Space(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sp.Total <= 0 || sp.Free < 0 || sp.Free > sp.Total {
		t.Fatalf("Space = %+v", sp)
	}
	cr, ok := s.d.(volmap.Creator)
	if !ok {
		return
	}
	if sp.Free < 64*mib {
		t.Skipf("less than 64 MiB free (%+v)", sp)
	}
	_, v := s.create(t, 32*mib)
	if v.Thin {
		return // a thin volume takes pool space as it is written
	}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		now, err := sr.Space(s.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if now.Total != sp.Total {
			t.Fatalf("Space total changed from %d to %d", sp.Total, now.Total)
		}
		if now.Free <= sp.Free-32*mib {
			sp = now
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("free space %d after creating 32 MiB, was %d", now.Free, sp.Free)
		}
	}
	before := s.listed(t)
	name := s.newName()
	if _, err := cr.Create(s.ctx, name, sp.Free+64*mib, meta.Attrs{Size: -1}); !errors.Is(err, volmap.ErrNoSpace) {
		s.removeIfThere(name)
		t.Fatalf("Create of more than is free (%d): %v, want ErrNoSpace", sp.Free, err)
	}
	if after := s.listed(t); len(after) != len(before) {
		t.Fatalf("a failed Create left a volume: %v", after)
	}
}

// Resize grows and shrinks a volume in whole allocation units, keeping
// the bytes both sizes hold.
func (s *suite) testResize(t *testing.T) {
	rs := s.d.(volmap.Resizer)
	name, v := s.create(t, 4*mib)
	data := pattern(mib, 1)
	s.writeAt(t, name, data, 0)
	size, err := rs.Resize(s.ctx, name, 3*v.Size+1)
	if err != nil || size < 3*v.Size+1 {
		t.Fatalf("Resize to %d = %d, %v", 3*v.Size+1, size, err)
	}
	s.checkSize(t, name, size)
	if same, err := rs.Resize(s.ctx, name, size); err != nil || same != size {
		t.Fatalf("Resize to the same size = %d, %v", same, err)
	}
	s.writeAt(t, name, data, size-mib)
	small, err := rs.Resize(s.ctx, name, 1)
	if err != nil || small < 1 || small > v.Size {
		t.Fatalf("Resize to 1 byte = %d, %v; want one allocation unit", small, err)
	}
	s.checkSize(t, name, small)
	n := min(small, mib)
	if !bytes.Equal(s.readAt(t, name, int(n), 0), data[:n]) {
		t.Fatal("Resize changed the bytes the volume kept")
	}
	if _, err := rs.Resize(s.ctx, s.newName(), mib); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("Resize of a missing volume: %v", err)
	}
}

// checkSize checks that the listing and the device agree on size.
func (s *suite) checkSize(t *testing.T, name string, size int64) {
	t.Helper()
	if v, err := s.d.Lookup(s.ctx, name); err != nil || v.Size != size {
		t.Fatalf("Lookup(%q) = size %d, %v; want %d", name, v.Size, err, size)
	}
	f, err := s.d.Open(s.ctx, name, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, err := volmap.DeviceSize(f); err != nil || got != size {
		t.Fatalf("device of %q is %d bytes (%v), want %d", name, got, err, size)
	}
}

// A volume held open by another process is not removed (a VM's disk).
func (s *suite) testRemoveInUse(t *testing.T) {
	name, v := s.create(t, 4*mib)
	release := s.holdElsewhere(t, name)
	err := s.d.(volmap.Remover).Remove(s.ctx, name)
	if !errors.Is(err, volmap.ErrInUse) {
		t.Fatalf("Remove of a volume held elsewhere: %v, want ErrInUse", err)
	}
	t.Logf("Remove of a held volume: %v", err)
	if id := s.id(t, name); id != v.ID {
		t.Fatalf("a refused Remove changed the volume: ID %q, was %q", id, v.ID)
	}
	release()
	if err := s.d.(volmap.Remover).Remove(s.ctx, name); err != nil {
		t.Fatalf("Remove once released: %v", err)
	}
}

// Replace renames a volume over another, whose volume is removed; onto a
// free name it is a rename. Rename never replaces.
func (s *suite) testReplace(t *testing.T) {
	rp := s.d.(volmap.Replacer)
	a, va := s.create(t, 4*mib)
	b, vb := s.create(t, 4*mib)
	da, db := pattern(mib, 'a'), pattern(mib, 'b')
	s.writeAt(t, a, da, 0)
	s.writeAt(t, b, db, 0)
	if rn, ok := s.d.(volmap.Renamer); ok {
		if err := rn.Rename(s.ctx, a, b); !errors.Is(err, volmap.ErrExists) {
			t.Fatalf("Rename onto an existing volume: %v, want ErrExists", err)
		}
	}
	if err := rp.Replace(s.ctx, a, b); err != nil {
		t.Fatal(err)
	}
	ids := s.listed(t)
	if _, ok := ids[a]; ok {
		t.Errorf("%q still listed after Replace", a)
	}
	if ids[b] != va.ID {
		t.Errorf("%q has ID %q after Replace, want %q (the source's)", b, ids[b], va.ID)
	}
	for n, id := range ids {
		if id == vb.ID {
			t.Errorf("the replaced volume is still listed as %q", n)
		}
	}
	if !bytes.Equal(s.readAt(t, b, mib, 0), da) {
		t.Error("the replacing volume's data differs")
	}
	if err := rp.Replace(s.ctx, b, b); err != nil {
		t.Errorf("Replace onto itself: %v", err)
	}
	if err := rp.Replace(s.ctx, b, a); err != nil {
		t.Fatalf("Replace onto a free name: %v", err)
	}
	if s.id(t, a) != va.ID {
		t.Error("Replace onto a free name did not rename")
	}
	if err := rp.Replace(s.ctx, s.newName(), a); !errors.Is(err, volmap.ErrNotFound) {
		t.Errorf("Replace of a missing volume: %v", err)
	}
}

// A Replace whose target cannot be removed (held by another process) puts
// both volumes back under their names.
func (s *suite) testReplaceInUse(t *testing.T) {
	rp := s.d.(volmap.Replacer)
	a, va := s.create(t, 4*mib)
	b, vb := s.create(t, 4*mib)
	da, db := pattern(mib, 'a'), pattern(mib, 'b')
	s.writeAt(t, a, da, 0)
	s.writeAt(t, b, db, 0)
	release := s.holdElsewhere(t, b)
	before := s.listed(t)
	err := rp.Replace(s.ctx, a, b)
	if !errors.Is(err, volmap.ErrInUse) {
		t.Fatalf("Replace over a volume held elsewhere: %v, want ErrInUse", err)
	}
	t.Logf("Replace over a held volume: %v", err)
	ids := s.listed(t)
	if ids[a] != va.ID || ids[b] != vb.ID {
		t.Fatalf("after a failed Replace: %v; want %s=%s %s=%s", ids, a, va.ID, b, vb.ID)
	}
	if len(ids) != len(before) {
		t.Fatalf("a failed Replace left extra volumes: %v", ids)
	}
	if !bytes.Equal(s.readAt(t, a, mib, 0), da) || !bytes.Equal(s.readAt(t, b, mib, 0), db) {
		t.Fatal("data after a failed Replace")
	}
	release()
	if err := rp.Replace(s.ctx, a, b); err != nil {
		t.Fatalf("Replace once released: %v", err)
	}
}

// Detach takes a volume out of the namespace while this process keeps
// using it; Reattach puts it back; Purge destroys it, and only it.
func (s *suite) testDetach(t *testing.T) {
	dt := s.d.(volmap.Detacher)
	cr := s.d.(volmap.Creator)
	name, v := s.create(t, 4*mib)
	data := pattern(mib, 'd')
	s.writeAt(t, name, data, 0)
	own, err := s.d.Open(s.ctx, name, os.O_RDWR|syscall.O_DIRECT) // this process's fds do not count
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	token, err := dt.Detach(s.ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.d.Lookup(s.ctx, name); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("Lookup of a detached volume: %v", err)
	}
	for n, id := range s.listed(t) {
		if id == v.ID {
			t.Fatalf("the detached volume is listed as %q", n)
		}
	}
	b := alignedBuf(mib)
	if _, err := own.ReadAt(b, 0); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("read through the open fd after Detach: %v", err)
	}
	// The name is free at once.
	nv, err := cr.Create(s.ctx, name, mib, meta.Attrs{Size: -1})
	if err != nil {
		t.Fatalf("Create under a detached volume's name: %v", err)
	}
	if nv.ID == v.ID {
		t.Fatal("the new volume has the detached one's ID")
	}
	if err := dt.Reattach(s.ctx, token, name); !errors.Is(err, volmap.ErrExists) {
		t.Fatalf("Reattach onto an existing name: %v, want ErrExists", err)
	}
	if err := s.d.(volmap.Remover).Remove(s.ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := dt.Reattach(s.ctx, token, name); err != nil {
		t.Fatal(err)
	}
	if s.id(t, name) != v.ID || !bytes.Equal(s.readAt(t, name, mib, 0), data) {
		t.Fatal("volume after Reattach")
	}

	// Held by another process: refused, nothing changed.
	release := s.holdElsewhere(t, name)
	if _, err := dt.Detach(s.ctx, name); !errors.Is(err, volmap.ErrInUse) {
		t.Fatalf("Detach of a volume held elsewhere: %v, want ErrInUse", err)
	}
	if s.id(t, name) != v.ID {
		t.Fatal("a refused Detach changed the volume")
	}
	release()

	token, err = dt.Detach(s.ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	// Writes through the open fd still land.
	copy(b, pattern(mib, 'e'))
	if _, err := own.WriteAt(b, 0); err != nil {
		t.Fatalf("write through the open fd after Detach: %v", err)
	}
	own.Close()
	other, _ := s.create(t, mib)
	if err := dt.Purge(s.ctx, other); err == nil {
		t.Fatal("Purge of a file name (not a token) succeeded")
	}
	if _, err := s.d.Lookup(s.ctx, other); err != nil {
		t.Fatalf("a refused Purge touched the volume: %v", err)
	}
	if err := dt.Purge(s.ctx, token); err != nil {
		t.Fatal(err)
	}
	if err := dt.Purge(s.ctx, token); err == nil {
		t.Fatal("a second Purge succeeded")
	}
	if err := dt.Reattach(s.ctx, token, name); err == nil {
		t.Fatal("Reattach of a purged volume succeeded")
	}
	if _, err := dt.Detach(s.ctx, s.newName()); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("Detach of a missing volume: %v", err)
	}
	for n, id := range s.listed(t) {
		if id == v.ID {
			t.Fatalf("the purged volume is listed as %q", n)
		}
	}
}

// Zero makes whole blocks read as zeros and leaves the rest alone: in the
// middle of a volume, across its allocation chunks, and a single block.
func (s *suite) testZero(t *testing.T) {
	z := s.d.(volmap.Zeroer)
	name := s.existing
	if _, ok := s.d.(volmap.Creator); ok {
		name, _ = s.create(t, 4*mib)
	} else {
		orig := s.readAt(t, name, mib, 0)
		defer s.writeAt(t, name, orig, 0)
	}
	data := pattern(mib, 'z')
	s.writeAt(t, name, data, 0)
	f, err := s.d.Open(s.ctx, name, os.O_RDWR|syscall.O_DIRECT)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lbs, err := volmap.LogicalBlockSize(f)
	if err != nil {
		t.Fatal(err)
	}
	bs := int64(lbs)
	for _, r := range [][2]int64{{128 << 10, 512 << 10}, {bs, bs}, {mib - 2*bs, 2 * bs}} {
		if err := z.Zero(s.ctx, name, f, r[0], r[1]); err != nil {
			t.Fatalf("Zero(%d, %d): %v", r[0], r[1], err)
		}
		clear(data[r[0] : r[0]+r[1]])
	}
	b := alignedBuf(mib)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(b, data); i >= 0 {
		t.Fatalf("after Zero, byte %d is %#x, want %#x", i, b[i], data[i])
	}
	// Another fd sees the same.
	if !bytes.Equal(s.readAt(t, name, mib, 0), data) {
		t.Fatal("a second fd reads other bytes after Zero")
	}
}

func (s *suite) testFlush(t *testing.T) {
	if err := s.d.(volmap.Flusher).Flush(s.ctx); err != nil {
		t.Fatal(err)
	}
}

// firstDiff is the index of the first byte where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
