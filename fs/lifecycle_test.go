package fs

// Lifecycle tests: volfs's create, growth and trim, truncate, remove of
// open files, rename (over existing and open files), O_TRUNC, fallocate,
// statfs and its ENOSPC paths, mounted in-process over the loopdir driver
// (see mount_test.go). The same code runs on LVM in the guest
// (integration/lvm); here it runs in seconds on any host with FUSE and
// loop devices.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/testutil"
	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
	"github.com/volfs/volfs/volmap/loopdir"
)

const (
	kib    = 1 << 10
	mib    = 1 << 20
	extent = loopdir.DefaultExtent
)

func umasked(mode os.FileMode) os.FileMode {
	old := syscall.Umask(0)
	syscall.Umask(old)
	return mode &^ os.FileMode(old)
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// A created file is listed at once; its volume appears at the last close
// (one extent for an empty file), not at open(O_CREAT).
func TestCreateLazy(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		f, err := os.OpenFile(m.path("new"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m.volume("new"); ok {
			t.Fatal("open(O_CREAT) created the volume")
		}
		if !slices.Contains(names(t, m.dir), "new") {
			t.Fatalf("a created file is not listed: %v", names(t, m.dir))
		}
		st, err := os.Stat(m.path("new"))
		if err != nil || st.Size() != 0 || st.Mode() != umasked(0o640) {
			t.Fatalf("stat of a created file: %v, %v", st, err)
		}
		if _, err := os.OpenFile(m.path("new"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640); !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("O_EXCL on a created file: %v", err)
		}
		f.Close()
		m.waitVolumeSize("new", extent)
		if v, _ := m.volume("new"); v.Attrs.Size != 0 || v.Attrs.Mode != uint32(umasked(0o640)) {
			t.Fatalf("volume of an empty file: %+v", v.Attrs)
		}
		if st, err := os.Stat(m.path("new")); err != nil || st.Size() != 0 {
			t.Fatalf("stat after the last close: %v, %v", st, err)
		}
		if n := m.d.Calls(loopdir.OpCreate); n != 1 {
			t.Fatalf("%d creates", n)
		}
	})
}

// Writes past the end grow the volume in large steps, not per write; the
// last close trims it to the whole extents the file needs. The gap a
// write leaves reads as zeros (the linear pool's new space holds stale
// bytes).
func TestWriteGrowTrim(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		f, err := os.Create(m.path("g"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		data := pattern(64*kib, 1)
		for off := int64(0); off < mib; off += int64(len(data)) {
			if _, err := f.WriteAt(data, off); err != nil {
				t.Fatal(err)
			}
		}
		if v, ok := m.volume("g"); !ok || v.Size != 64*mib {
			t.Fatalf("volume after writing 1 MiB: %+v, want 64 MiB (the first growth step)", v)
		}
		if _, err := f.WriteAt(data, 65*mib); err != nil {
			t.Fatal(err)
		}
		if v, _ := m.volume("g"); v.Size != 128*mib {
			t.Fatalf("volume after writing past 64 MiB: %d bytes, want 128 MiB (doubled)", v.Size)
		}
		size := int64(65*mib + len(data))
		if st, _ := f.Stat(); st.Size() != size {
			t.Fatalf("size %d, want %d", st.Size(), size)
		}
		if c, r := m.d.Calls(loopdir.OpCreate), m.d.Calls(loopdir.OpResize); c != 1 || r != 1 {
			t.Fatalf("%d creates and %d resizes for 17 writes, want 1 and 1", c, r)
		}
		f.Close()
		m.waitVolumeSize("g", 68*mib)
		if st, err := os.Stat(m.path("g")); err != nil || st.Size() != size {
			t.Fatalf("size after the last close: %v, %v", st, err)
		}
		m.checkZero("g", mib, 64*mib)
		g, err := os.Open(m.path("g"))
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		for _, off := range []int64{0, mib - int64(len(data)), 65 * mib} {
			b := make([]byte, len(data))
			if _, err := g.ReadAt(b, off); err != nil || firstDiff(b, data) != len(b) {
				t.Fatalf("read back at %d: %v", off, err)
			}
		}
	})
}

// truncate grows (the new bytes read as zeros, also where the file had
// data before it shrank) and shrinks, and the volume follows in whole
// extents.
func TestTruncate(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		data := pattern(10000, 2)
		m.writeFile("t", data)
		big := int64(20*mib + 123)
		if err := os.Truncate(m.path("t"), big); err != nil {
			t.Fatal(err)
		}
		m.waitVolumeSize("t", 24*mib)
		if st, _ := os.Stat(m.path("t")); st.Size() != big {
			t.Fatalf("size %d after truncate to %d", st.Size(), big)
		}
		m.checkZero("t", int64(len(data)), big-int64(len(data)))
		if err := os.Truncate(m.path("t"), 1000); err != nil {
			t.Fatal(err)
		}
		m.waitVolumeSize("t", extent)
		m.checkFile("t", data[:1000])
		f, err := os.OpenFile(m.path("t"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(9000); err != nil {
			t.Fatal(err)
		}
		m.checkFile("t", append(data[:1000:1000], make([]byte, 8000)...))
		if err := f.Truncate(0); err != nil {
			t.Fatal(err)
		}
		f.Close()
		m.waitVolumeSize("t", extent)
		m.checkFile("t", nil)
	})
}

// open(O_TRUNC) empties a file, and its last close gives the space back.
func TestOpenTrunc(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		m.writeFile("o", pattern(8*kib, 3))
		if err := os.Truncate(m.path("o"), 9*mib); err != nil {
			t.Fatal(err)
		}
		m.waitVolumeSize("o", 12*mib)
		f, err := os.OpenFile(m.path("o"), os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := f.Stat(); st.Size() != 0 {
			t.Fatalf("size %d after O_TRUNC", st.Size())
		}
		if _, err := f.Write([]byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		f.Close()
		m.waitVolumeSize("o", extent)
		m.checkFile("o", []byte("0123456789"))
	})
}

// rm of an open file removes the name at once; the open file keeps
// reading and writing its volume until the last close, which destroys it.
func TestRemoveOpen(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		old := pattern(64*kib, 4)
		m.writeFile("r", old)
		f, err := os.OpenFile(m.path("r"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := os.Remove(m.path("r")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(m.path("r")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stat of a removed file: %v", err)
		}
		if _, ok := m.volume("r"); ok || len(m.d.Detached()) != 1 {
			t.Fatalf("after rm of an open file: volume listed %v, detached %v", ok, m.d.Detached())
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Nlink != 0 {
			t.Fatalf("fstat of a removed open file: nlink %d, %v", st.Nlink, err)
		}
		b := make([]byte, len(old))
		if _, err := f.ReadAt(b, 0); err != nil || firstDiff(b, old) != len(b) {
			t.Fatalf("read of a removed open file: %v", err)
		}
		if _, err := f.WriteAt([]byte("still here"), 100); err != nil {
			t.Fatalf("write to a removed open file: %v", err)
		}
		copy(old[100:], "still here")
		// The name is free for a new file.
		fresh := pattern(4*kib, 5)
		m.writeFile("r", fresh)
		if _, err := f.ReadAt(b, 0); err != nil || firstDiff(b, old) != len(b) {
			t.Fatalf("read of a removed open file after its name was reused: %v", err)
		}
		f.Close()
		m.waitNoDetached()
		m.checkFile("r", fresh)

		// A closed file's volume goes at once; a created file removed
		// before its last close never gets one.
		if err := os.Remove(m.path("r")); err != nil {
			t.Fatal(err)
		}
		if _, ok := m.volume("r"); ok {
			t.Fatal("rm of a closed file left its volume")
		}
		creates := m.d.Calls(loopdir.OpCreate)
		p, err := os.Create(m.path("p"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(m.path("p")); err != nil {
			t.Fatal(err)
		}
		p.Close()
		if _, err := os.Stat(m.path("p")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stat of a removed created file: %v", err)
		}
		if n := m.d.Calls(loopdir.OpCreate); n != creates {
			t.Fatal("a file removed before its last close got a volume")
		}
	})
}

// Without a Detacher, rm of an open file still removes it at once: the
// volume goes, and the open file's reads and writes fail with ESTALE.
func TestRemoveOpenNoDetacher(t *testing.T) {
	m := newTestMount(t, mountConfig{NoDetacher: true})
	m.writeFile("r", pattern(4*kib, 4))
	f, err := os.OpenFile(m.path("r"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Remove(m.path("r")); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.volume("r"); ok {
		t.Fatal("rm of an open file left its volume")
	}
	b := make([]byte, 4*kib)
	if _, err := f.ReadAt(b, 0); !errors.Is(err, syscall.ESTALE) {
		t.Fatalf("read of a removed open file: %v, want ESTALE", err)
	}
	if _, err := f.WriteAt(b, 0); !errors.Is(err, syscall.ESTALE) {
		t.Fatalf("write to a removed open file: %v, want ESTALE", err)
	}
}

// rm of a file whose volume another program holds fails with EBUSY and
// changes nothing.
func TestRemoveHeldElsewhere(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		data := pattern(4*kib, 6)
		m.writeFile("h", data)
		release := m.holdElsewhere("h")
		if err := os.Remove(m.path("h")); !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("rm of a held file: %v, want EBUSY", err)
		}
		m.checkFile("h", data)
		if !strings.Contains(m.log.String(), "held by pid") {
			t.Error("the log does not say who holds the volume")
		}
		release()
		if err := os.Remove(m.path("h")); err != nil {
			t.Fatal(err)
		}
	})
}

// mv renames the volume; an open file keeps working under its new name.
func TestRename(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		data := pattern(8*kib, 7)
		m.writeFile("a", data)
		st, _ := os.Stat(m.path("a"))
		if err := os.Rename(m.path("a"), m.path("b")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(m.path("a")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("old name after mv: %v", err)
		}
		if st2, err := os.Stat(m.path("b")); err != nil || !os.SameFile(st, st2) {
			t.Fatalf("new name after mv is another file: %v", err)
		}
		m.checkFile("b", data)
		f, err := os.OpenFile(m.path("b"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := os.Rename(m.path("b"), m.path("c")); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(data, int64(len(data))); err != nil {
			t.Fatal(err)
		}
		f.Close()
		m.waitFor("c's new size recorded", func() bool {
			v, _ := m.volume("c")
			return v.Attrs.Size == int64(2*len(data))
		})
		m.checkFile("c", append(data[:len(data):len(data)], data...))
		if _, ok := m.volume("b"); ok {
			t.Fatal("volume b still exists")
		}
	})
}

// mv over an existing file replaces it: its volume is removed.
func TestRenameOver(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		da, db := pattern(8*kib, 'a'), pattern(12*kib, 'b')
		m.writeFile("a", da)
		m.writeFile("b", db)
		va, _ := m.volume("a")
		if err := os.Rename(m.path("a"), m.path("b")); err != nil {
			t.Fatal(err)
		}
		m.checkFile("b", da)
		vols, err := m.d.List(context.Background())
		if err != nil || len(vols) != 1 || vols[0].Name != "b" || vols[0].ID != va.ID {
			t.Fatalf("volumes after mv over a file: %+v, %v", vols, err)
		}
		if n := m.d.Calls(loopdir.OpRemove); n != 1 {
			t.Fatalf("%d removes", n)
		}
	})
}

// mv over a file that volfs has open: the name takes the new file at
// once, the open file keeps its volume until its last close.
func TestRenameOverOpen(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		da, db := pattern(8*kib, 'a'), pattern(12*kib, 'b')
		m.writeFile("a", da)
		m.writeFile("b", db)
		f, err := os.Open(m.path("b"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := os.Rename(m.path("a"), m.path("b")); err != nil {
			t.Fatal(err)
		}
		m.checkFile("b", da)
		b := make([]byte, len(db))
		if _, err := f.ReadAt(b, 0); err != nil || firstDiff(b, db) != len(b) {
			t.Fatalf("the replaced open file reads other bytes: %v", err)
		}
		if len(m.d.Detached()) != 1 {
			t.Fatalf("detached volumes: %v", m.d.Detached())
		}
		f.Close()
		m.waitNoDetached()
		m.checkFile("b", da)
	})
}

// mv over a file whose volume another program holds fails with EBUSY and
// leaves both files as they were (the driver's Replace rolls back).
func TestRenameOverHeld(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		da, db := pattern(8*kib, 'a'), pattern(12*kib, 'b')
		m.writeFile("a", da)
		m.writeFile("b", db)
		release := m.holdElsewhere("b")
		if err := os.Rename(m.path("a"), m.path("b")); !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("mv over a held file: %v, want EBUSY", err)
		}
		m.checkFile("a", da)
		m.checkFile("b", db)
		release()
		if err := os.Rename(m.path("a"), m.path("b")); err != nil {
			t.Fatal(err)
		}
		m.checkFile("b", da)
	})
}

// renameat2: RENAME_NOREPLACE refuses an existing target and renames
// otherwise; RENAME_EXCHANGE is refused (volumes cannot swap names
// atomically).
func TestRenameFlags(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		da, db := pattern(4*kib, 'a'), pattern(4*kib, 'b')
		m.writeFile("a", da)
		m.writeFile("b", db)
		if err := unix.Renameat2(unix.AT_FDCWD, m.path("a"), unix.AT_FDCWD, m.path("b"), unix.RENAME_NOREPLACE); !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("RENAME_NOREPLACE over a file: %v, want EEXIST", err)
		}
		m.checkFile("a", da)
		m.checkFile("b", db)
		if err := unix.Renameat2(unix.AT_FDCWD, m.path("a"), unix.AT_FDCWD, m.path("b"), unix.RENAME_EXCHANGE); !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("RENAME_EXCHANGE: %v, want EINVAL", err)
		}
		if err := unix.Renameat2(unix.AT_FDCWD, m.path("a"), unix.AT_FDCWD, m.path("c"), unix.RENAME_NOREPLACE); err != nil {
			t.Fatalf("RENAME_NOREPLACE to a free name: %v", err)
		}
		m.checkFile("c", da)
		// A created file not yet backed by a volume is an existing
		// target too.
		p, err := os.Create(m.path("p"))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := unix.Renameat2(unix.AT_FDCWD, m.path("c"), unix.AT_FDCWD, m.path("p"), unix.RENAME_NOREPLACE); !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("RENAME_NOREPLACE over a created file: %v, want EEXIST", err)
		}
	})
}

// fallocate: punch-hole and zero-range zero exactly their range (partial
// blocks included); zero-range and mode 0 past the end grow the file.
func TestFallocate(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		want := pattern(256*kib, 8)
		m.writeFile("f", want)
		f, err := os.OpenFile(m.path("f"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fd := int(f.Fd())
		for _, c := range []struct {
			mode     uint32
			off, len int64
		}{
			{unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 1000, 10000},
			{unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 128 * kib, 64 * kib},
			{unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE, 64*kib + 7, 3 * kib},
			{unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE, 250 * kib, 100 * kib}, // past the end: kept size
			{unix.FALLOC_FL_ZERO_RANGE, 256*kib - 100, 1000},                             // grows by 900
			{0, 0, 256*kib + 5000}, // grows to it
		} {
			if err := unix.Fallocate(fd, c.mode, c.off, c.len); err != nil {
				t.Fatalf("fallocate(%#x, %d, %d): %v", c.mode, c.off, c.len, err)
			}
			end := c.off + c.len
			if c.mode&unix.FALLOC_FL_KEEP_SIZE != 0 {
				end = min(end, int64(len(want)))
			} else if end > int64(len(want)) {
				want = append(want, make([]byte, end-int64(len(want)))...)
			}
			if c.mode != 0 {
				clear(want[c.off:end])
			}
		}
		if st, _ := f.Stat(); st.Size() != int64(len(want)) {
			t.Fatalf("size %d after fallocate, want %d", st.Size(), len(want))
		}
		m.checkFile("f", want)
		if err := unix.Fallocate(fd, unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096); !errors.Is(err, syscall.EOPNOTSUPP) {
			t.Fatalf("collapse-range: %v, want EOPNOTSUPP", err)
		}
	})
}

// statfs reports the pool: its size and what the volumes leave free.
func TestStatfs(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		check := func() {
			t.Helper()
			var st unix.Statfs_t
			if err := unix.Statfs(m.dir, &st); err != nil {
				t.Fatal(err)
			}
			sp, _ := m.d.Space(context.Background())
			if int64(st.Blocks)*st.Bsize != sp.Total || int64(st.Bfree)*st.Bsize != sp.Free || st.Bavail != st.Bfree {
				t.Fatalf("statfs %d blocks, %d free, %d available of %d bytes; the pool: %+v", st.Blocks, st.Bfree, st.Bavail, st.Bsize, sp)
			}
		}
		check()
		m.writeFile("s", []byte("x"))
		m.waitVolumeSize("s", extent)
		if sp, _ := m.d.Space(context.Background()); sp.Free != sp.Total-extent {
			t.Fatalf("space after one file: %+v", sp)
		}
		check()
		// statfs of a file is its file system's (df FILE; the loop
		// driver takes a loop device's discard granularity from it, and
		// refuses every discard when that is 0).
		var root, file unix.Statfs_t
		if err := unix.Statfs(m.dir, &root); err != nil {
			t.Fatal(err)
		}
		if err := unix.Statfs(m.dir+"/s", &file); err != nil || file.Bsize != root.Bsize || file.Blocks != root.Blocks {
			t.Fatalf("statfs of a file: bsize %d, %d blocks (%v); of the mount: bsize %d, %d blocks",
				file.Bsize, file.Blocks, err, root.Bsize, root.Blocks)
		}
	})
}

// A full pool: open(O_CREAT) fails at once with ENOSPC, and so do writes
// and truncates that need more space; a file whose volume cannot be
// created after all (the pool filled up in between) fails its writes
// with ENOSPC and leaves the directory at its last close.
func TestNoSpace(t *testing.T) {
	m := newTestMount(t, mountConfig{Config: loopdir.Config{Capacity: 16 * mib}})
	data := pattern(4*kib, 9)
	m.writeFile("a", data)
	if err := os.Truncate(m.path("a"), 12*mib+1); err != nil {
		t.Fatal(err)
	}
	m.waitVolumeSize("a", 16*mib)
	if _, err := os.Create(m.path("b")); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("create in a full pool: %v, want ENOSPC", err)
	}
	if slices.Contains(names(t, m.dir), "b") {
		t.Fatal("a refused create is listed")
	}
	f, err := os.OpenFile(m.path("a"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 16*mib); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write past the end in a full pool: %v, want ENOSPC", err)
	}
	if err := f.Truncate(17 * mib); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("truncate up in a full pool: %v, want ENOSPC", err)
	}
	if st, _ := f.Stat(); st.Size() != 12*mib+1 {
		t.Fatalf("size %d after failed growth", st.Size())
	}
	if err := f.Truncate(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	f.Close()
	m.waitVolumeSize("a", extent)
	m.checkFile("a", data)

	// The pool fills between open(O_CREAT) and the first write.
	m.d.SetFault(func(op loopdir.Op, name string) error {
		if op == loopdir.OpCreate && name == "late" {
			return volmap.ErrNoSpace
		}
		return nil
	})
	late, err := os.Create(m.path("late"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := late.Write(data); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write when the volume cannot be created: %v, want ENOSPC", err)
	}
	late.Close()
	m.waitFor("late gone", func() bool { return !slices.Contains(names(t, m.dir), "late") })
	if _, ok := m.volume("late"); ok {
		t.Fatal("a failed create left a volume")
	}
}

// A create that fails for another reason than space is not tried again at
// the smaller size: the first volume may exist (an lvcreate interrupted
// after it committed), and the second would fail with EEXIST. The first
// create fails here, later ones work: the file's volume, if a write made
// one, has the growth step's size, never the write's.
func TestCreateFailureNotRetried(t *testing.T) {
	m := newTestMount(t, mountConfig{})
	data := pattern(4*kib, 3)
	var creates atomic.Int32
	m.d.SetFault(func(op loopdir.Op, name string) error {
		if op == loopdir.OpCreate && name == "failing" && creates.Add(1) == 1 {
			return errors.New("injected: lvcreate failed")
		}
		return nil
	})
	fc, err := os.Create(m.path("failing"))
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close() // before the mount's cleanup, which waits for it
	_, err = syscall.Pwrite(int(fc.Fd()), data, 0)
	v, ok := m.volume("failing")
	t.Logf("write: %v; %d creates; volume %v (%d bytes)", err, creates.Load(), ok, v.Size)
	if ok && v.Size < 64*mib {
		t.Fatalf("after a failed create, a volume of %d bytes: the create was retried at the write's size", v.Size)
	}
	if err == nil && !ok {
		t.Fatal("the write succeeded without a volume")
	}
	m.d.SetFault(nil)
}

// Names the driver refuses are refused at create and rename, before
// anything changes; other odd names work.
func TestNames(t *testing.T) {
	m := newTestMount(t, mountConfig{Config: loopdir.Config{MaxName: 100}})
	long := strings.Repeat("l", 150)
	if _, err := os.Create(m.path(long)); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Fatalf("create with a name the driver refuses: %v, want ENAMETOOLONG", err)
	}
	odd := "web disk:1 ü\t\xff"
	m.writeFile(odd, []byte("odd"))
	if err := os.Rename(m.path(odd), m.path(long)); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Fatalf("rename to a name the driver refuses: %v, want ENAMETOOLONG", err)
	}
	if got := names(t, m.dir); !slices.Equal(got, []string{odd}) {
		t.Fatalf("listing %q", got)
	}
	m.checkFile(odd, []byte("odd"))
}

// mv over an open file whose rename then fails: the replaced file, whose
// volume was already detached, gets its name and volume back, and is not
// destroyed at its last close.
func TestRenameOverOpenRollback(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		da, db := pattern(8*kib, 'a'), pattern(12*kib, 'b')
		m.writeFile("a", da)
		m.writeFile("b", db)
		f, err := os.Open(m.path("b"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		m.d.SetFault(func(op loopdir.Op, name string) error {
			if op == loopdir.OpRename {
				return volmap.ErrInUse
			}
			return nil
		})
		if err := os.Rename(m.path("a"), m.path("b")); !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("mv with a failing rename: %v, want EBUSY", err)
		}
		m.d.SetFault(nil)
		if d := m.d.Detached(); len(d) != 0 {
			t.Fatalf("detached after the rollback: %v", d)
		}
		m.checkFile("a", da)
		m.checkFile("b", db)
		f.Close()
		m.waitClosed("b")
		m.checkFile("b", db)
		if _, ok := m.volume("b"); !ok {
			t.Fatal("the last close destroyed the volume put back")
		}
	})
}

// Attributes and sizes persist across unmount and remount.
func TestRemount(t *testing.T) {
	cfg := mountConfig{Config: loopdir.Config{}}
	cfg.Dir = testutil.ScratchDir(t)
	m := newTestMount(t, cfg)
	data := pattern(5000, 10)
	m.writeFile("p", data)
	p := m.path("p")
	mtime := time.Unix(1700000000, 123456789)
	if err := os.Chmod(p, 0o604); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "user.k", []byte("v\x00"), 0); err != nil {
		t.Fatal(err)
	}
	m.unmount()

	m = newTestMount(t, cfg)
	st, err := os.Stat(m.path("p"))
	if err != nil || st.Mode() != 0o604 || !st.ModTime().Equal(mtime) || st.Size() != int64(len(data)) {
		t.Fatalf("after remount: %v, %v", st, err)
	}
	b := make([]byte, 16)
	if n, err := unix.Getxattr(m.path("p"), "user.k", b); err != nil || string(b[:n]) != "v\x00" {
		t.Fatalf("xattr after remount: %q, %v", b[:n], err)
	}
	m.checkFile("p", data)
}

// chmod, utimes and truncate save the file's attributes, the logical size
// among them: a size grown by writes still in the device's page cache is
// saved only after they are flushed, else a crash shows a file whose size
// covers bytes that never reached the device. The driver checks, when the
// size is saved, that the bytes are in the loop device's backing file
// (what the device holds, beneath its page cache).
func TestSetattrFlushesGrownSize(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		m.writeFile("s", pattern(8*kib, 1))
		backing, err := os.ReadFile("/sys/block/" + strings.TrimPrefix(m.d.Device("s"), "/dev/") + "/loop/backing_file")
		if err != nil {
			t.Fatal(err)
		}
		img, err := os.Open(strings.TrimSpace(string(backing)))
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		f, err := os.OpenFile(m.path("s"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		size := int64(8 * kib)
		for i, op := range []struct {
			name string
			do   func(size int64) error
		}{
			{"chmod", func(int64) error { return f.Chmod(0o600) }},
			{"utimes", func(int64) error { return os.Chtimes(m.path("s"), time.Now(), time.Unix(1e9, 0)) }},
			{"truncate", func(size int64) error { return f.Truncate(size + 100) }},
		} {
			// Unaligned: through the buffered fd, into the page cache.
			data := pattern(1000, byte(i+2))
			if _, err := f.WriteAt(data, size+1); err != nil {
				t.Fatal(err)
			}
			off := size + 1
			size = off + int64(len(data))
			var missing error
			m.d.SetFault(func(o loopdir.Op, name string) error {
				if o != loopdir.OpSetAttrs || name != "s" || missing != nil {
					return nil
				}
				// Read beneath the block device's cache (not a fork: the
				// server's Image lock is held here).
				got := make([]byte, len(data))
				if _, err := img.ReadAt(got, off); err != nil {
					missing = err
				} else if i := firstDiff(got, data); i != len(data) {
					missing = fmt.Errorf("byte %d of the write at %d is not on the device when the size is saved", i, off)
				}
				return nil
			})
			err := op.do(size)
			m.d.SetFault(nil)
			if err != nil {
				t.Fatalf("%s: %v", op.name, err)
			}
			if missing != nil {
				t.Fatalf("%s: %v", op.name, missing)
			}
			if op.name == "truncate" {
				size += 100
			}
		}
	})
}

// open(O_TRUNC) for writing of a file whose device is read-only fails
// with EROFS and leaves the file as it was: the refusal comes before the
// truncation, not after it.
func TestOpenTruncRefusedKeepsFile(t *testing.T) {
	forEachMount(t, func(t *testing.T, m *testMount) {
		data := pattern(8*kib, 5)
		m.writeFile("ro", data)
		dev, err := os.Open(m.d.Device("ro"))
		if err != nil {
			t.Fatal(err)
		}
		setRO := func(ro int) {
			t.Helper()
			if err := unix.IoctlSetPointerInt(int(dev.Fd()), unix.BLKROSET, ro); err != nil {
				t.Fatalf("BLKROSET %d: %v", ro, err)
			}
		}
		setRO(1)
		t.Cleanup(func() { setRO(0); dev.Close() })
		f, err := os.OpenFile(m.path("ro"), os.O_WRONLY|os.O_TRUNC, 0)
		if err == nil {
			f.Close()
		}
		if !errors.Is(err, syscall.EROFS) {
			t.Fatalf("open(O_TRUNC) on a read-only device: %v, want EROFS", err)
		}
		if st, err := os.Stat(m.path("ro")); err != nil || st.Size() != int64(len(data)) {
			t.Fatalf("after the refused open(O_TRUNC): %v, %v; want %d bytes", st, err, len(data))
		}
		m.checkFile("ro", data)
		if v, _ := m.volume("ro"); v.Attrs.Size >= 0 && v.Attrs.Size != int64(len(data)) {
			t.Fatalf("saved size %d after the refused open(O_TRUNC), want %d", v.Attrs.Size, len(data))
		}
	})
}

// A file without a volume yet that is removed or renamed while its volume
// is being made (by the close of the file) ends with no volume under the
// removed name, and with its volume under the new name: unlink and rename
// wait for the creation and act on what it made.
func TestPendingChangedWhileCreated(t *testing.T) {
	for _, c := range []struct {
		op    string
		do    func(m *testMount) error
		after string // the name the volume must have in the end, "" for none
	}{
		{"unlink", func(m *testMount) error { return os.Remove(m.path("p")) }, ""},
		{"rename", func(m *testMount) error { return os.Rename(m.path("p"), m.path("q")) }, "q"},
	} {
		t.Run(c.op, func(t *testing.T) {
			// The creation is held before the driver takes its lock, so
			// that the unlink or rename can run meanwhile (their lookups
			// go to the driver), as with a slow lvcreate.
			started, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			m := newTestMount(t, mountConfig{BeforeCreate: func(string) {
				once.Do(func() { close(started); <-release })
			}})
			f, err := os.Create(m.path("p"))
			if err != nil {
				t.Fatal(err)
			}
			closed := make(chan error, 1)
			go func() { closed <- f.Close() }() // FLUSH makes the volume
			<-started
			done := make(chan error, 1)
			go func() { done <- c.do(m) }()
			// Unlink and rename of a pending file need no driver call:
			// without waiting for the creation they are done in
			// milliseconds.
			select {
			case err := <-done:
				done <- err
			case <-time.After(300 * time.Millisecond):
			}
			close(release)
			if err := <-closed; err != nil {
				t.Fatalf("close: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatalf("%s: %v", c.op, err)
			}
			m.waitNoDetached()
			if _, ok := m.volume("p"); ok {
				t.Fatalf("after the %s, a volume is left under the old name p", c.op)
			}
			if c.after != "" {
				if _, ok := m.volume(c.after); !ok {
					t.Fatalf("after the rename, no volume %q", c.after)
				}
				if st, err := os.Stat(m.path(c.after)); err != nil || st.Size() != 0 {
					t.Fatalf("stat %s: %v, %v", c.after, st, err)
				}
			}
			if got := names(t, m.dir); !slices.Equal(got, slices.DeleteFunc([]string{c.after}, func(s string) bool { return s == "" })) {
				t.Fatalf("listed after the %s: %v", c.op, got)
			}
		})
	}
}

// A partial copy that a killed server's clone left (.volfs-clone-…) is
// removed before the next mount serves; no file may be created under, or
// renamed to, such a name (the mount would remove it).
func TestStaleCloneRemoved(t *testing.T) {
	m := newTestMount(t, mountConfig{})
	ctx := context.Background()
	stale := clonePrefix + "0123456789abcdef"
	for _, n := range []string{stale, "keep"} {
		if _, err := m.d.Create(ctx, n, 1<<20, meta.Attrs{Mode: 0o600, Size: -1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Create(m.path(clonePrefix + "x")); !errors.Is(err, syscall.EPERM) {
		t.Errorf("create %sx: %v, want EPERM", clonePrefix, err)
	}
	if err := os.Rename(m.path("keep"), m.path(clonePrefix+"y")); !errors.Is(err, syscall.EPERM) {
		t.Errorf("rename to %sy: %v, want EPERM", clonePrefix, err)
	}
	if err := os.Rename(m.path(stale), m.path("z")); !errors.Is(err, syscall.EPERM) {
		t.Errorf("rename of %s: %v, want EPERM (a clone under way would lose its copy)", stale, err)
	}
	m.root.RemoveStaleClones(ctx)
	if _, ok := m.volume(stale); ok {
		t.Errorf("%s is still there", stale)
	}
	if _, ok := m.volume("keep"); !ok {
		t.Error("a file that is no partial copy was removed")
	}
	if !strings.Contains(m.log.String(), "removed the partial copy of a clone that a killed server left") {
		t.Errorf("the log does not say what was removed:\n%s", m.log.String())
	}
}

// A write far past the end holds the file's lock while the gap is zeroed
// (minutes for a large gap on a device that writes its zeros), and so
// does a truncate that grows: stat of the file and `ls -l` of the mount
// answer meanwhile. They waited for the zeroing, so one user's writes
// could stall every listing of the mount.
func TestStatDuringLongZeroing(t *testing.T) {
	var hold atomic.Bool
	entered, release := make(chan struct{}, 4), make(chan struct{})
	m := newTestMount(t, mountConfig{Config: loopdir.Config{Thin: true, BlockSize: 4096}, BeforeZero: func() {
		if hold.Load() {
			entered <- struct{}{}
			<-release
		}
	}})
	m.writeFile("z", bytes.Repeat([]byte("z"), 1<<20))
	f, err := os.OpenFile(m.path("z"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct {
		what string
		grow func() error
	}{
		{"a write at 64 MiB", func() error { _, err := f.WriteAt([]byte("x"), 64<<20); return err }},
		{"truncate to 128 MiB", func() error { return f.Truncate(128 << 20) }},
	} {
		hold.Store(true)
		done := make(chan error, 1)
		go func() { done <- c.grow() }()
		select {
		case <-entered:
		case err := <-done:
			t.Fatalf("%s zeroed nothing through the driver: %v", c.what, err)
		}
		time.Sleep(1100 * time.Millisecond) // past the kernel's attribute and entry timeouts
		answered := make(chan error, 1)
		go func() {
			if _, err := os.Stat(m.path("z")); err != nil {
				answered <- err
				return
			}
			ents, err := os.ReadDir(m.dir)
			for _, e := range ents {
				if _, err := e.Info(); err != nil {
					answered <- err
					return
				}
			}
			answered <- err
		}()
		waited := false
		select {
		case err := <-answered:
			if err != nil {
				t.Errorf("stat or ls -l during %s: %v", c.what, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("stat and ls -l waited for the zeroing of %s", c.what)
			waited = true
		}
		hold.Store(false)
		release <- struct{}{}
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		if waited {
			<-answered
		}
	}
	if st, err := os.Stat(m.path("z")); err != nil || st.Size() != 128<<20 {
		t.Fatalf("after the writes: %v, %v", st, err)
	}
}

// A write past the end that writes nothing (the device fails it) leaves
// the file's size, as on a local file system: the size went to the
// write's offset, past a gap of zeros nobody wrote.
func TestFailedWritePastEndKeepsSize(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "volfs-test-tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a small tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	// Volumes are sparse files on a tmpfs of 8 MiB: once it is full, a
	// write to a hole fails at the loop device.
	m := newTestMount(t, mountConfig{Config: loopdir.Config{Dir: dir, Thin: true, Capacity: 1 << 30}, Zeroer: true})
	m.writeFile("w", bytes.Repeat([]byte("w"), 1<<20))
	f, err := os.OpenFile(m.path("w"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The volume grows to 128 MiB and stays so while the file is open:
	// the write below needs no growth, only the gap's zeroing.
	if err := f.Truncate(128 << 20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte("f"), 16<<20), 1<<20); err == nil {
		t.Skip("the small tmpfs did not fill")
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	before := st.Size()
	_, err = f.WriteAt(bytes.Repeat([]byte("x"), 1<<20), 64<<20)
	if err == nil {
		t.Fatal("a write to a full tmpfs succeeded")
	}
	t.Logf("before %d, write err %v", before, err)
	if st, _ := f.Stat(); st.Size() != before {
		t.Errorf("a write at 64 MiB that failed (%v) changed the size from %d to %d", err, before, st.Size())
	}
}

// A setxattr the driver refuses (ENOSPC: the VG's metadata area is kept
// for its own changes) leaves no xattr behind: getxattr does not show it,
// and the file's size and times are still saved at close. The refused
// xattr stayed in memory, and every later save carried it and failed.
func TestRefusedXattrNotKept(t *testing.T) {
	m := newTestMount(t, mountConfig{SetAttrs: func(a meta.Attrs) error {
		if len(a.Xattrs) > 0 {
			return fmt.Errorf("no room for xattrs: %w", volmap.ErrNoSpace)
		}
		return nil
	}})
	m.writeFile("x", []byte("abc"))
	if err := unix.Setxattr(m.path("x"), "user.k", []byte("v"), 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("setxattr the driver refuses: %v, want ENOSPC", err)
	}
	if _, err := unix.Getxattr(m.path("x"), "user.k", make([]byte, 16)); !errors.Is(err, unix.ENODATA) {
		t.Errorf("getxattr of a refused xattr: %v, want ENODATA", err)
	}
	f, err := os.OpenFile(m.path("x"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("defg")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close after the refused setxattr: %v", err)
	}
	m.waitFor("the size 7 recorded", func() bool {
		v, ok := m.volume("x")
		return ok && (v.Attrs.Size == 7 || v.Attrs.Size < 0 && v.Size == 7)
	})
}
