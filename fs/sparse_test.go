package fs

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
	"github.com/volfs/volfs/volmap/loopdir"
)

func TestAddExtent(t *testing.T) {
	for _, tc := range []struct {
		in       []volmap.Extent
		off, n   int64
		want     []volmap.Extent
		describe string
	}{
		{nil, 10, 5, []volmap.Extent{{Off: 10, Len: 5}}, "empty"},
		{[]volmap.Extent{{Off: 10, Len: 5}}, 0, 3, []volmap.Extent{{Off: 0, Len: 3}, {Off: 10, Len: 5}}, "before"},
		{[]volmap.Extent{{Off: 10, Len: 5}}, 20, 3, []volmap.Extent{{Off: 10, Len: 5}, {Off: 20, Len: 3}}, "after"},
		{[]volmap.Extent{{Off: 10, Len: 5}}, 15, 3, []volmap.Extent{{Off: 10, Len: 8}}, "touching the end"},
		{[]volmap.Extent{{Off: 10, Len: 5}}, 7, 3, []volmap.Extent{{Off: 7, Len: 8}}, "touching the start"},
		{[]volmap.Extent{{Off: 10, Len: 5}}, 11, 2, []volmap.Extent{{Off: 10, Len: 5}}, "inside"},
		{[]volmap.Extent{{Off: 0, Len: 2}, {Off: 10, Len: 5}, {Off: 20, Len: 1}, {Off: 30, Len: 1}}, 1, 20, []volmap.Extent{{Off: 0, Len: 21}, {Off: 30, Len: 1}}, "spanning three"},
	} {
		in := append([]volmap.Extent(nil), tc.in...)
		if got := addExtent(in, tc.off, tc.n); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v + [%d,+%d) = %v, want %v", tc.describe, tc.in, tc.off, tc.n, got, tc.want)
		}
	}
}

func TestSeekIn(t *testing.T) {
	ext := []volmap.Extent{{Off: 100, Len: 50}, {Off: 300, Len: 100}}
	const size = 350
	for _, tc := range []struct {
		off    int64
		whence int
		want   int64
	}{
		{0, unix.SEEK_DATA, 100},
		{0, unix.SEEK_HOLE, 0},
		{120, unix.SEEK_DATA, 120},
		{120, unix.SEEK_HOLE, 150},
		{150, unix.SEEK_DATA, 300},
		{150, unix.SEEK_HOLE, 150},
		{310, unix.SEEK_HOLE, size}, // the data runs past the file's end
		{310, unix.SEEK_DATA, 310},
	} {
		if got := seekIn(ext, tc.off, size, tc.whence); got != tc.want {
			t.Errorf("seek(%d, %d) = %d, want %d", tc.off, tc.whence, got, tc.want)
		}
	}
	if got := seekIn(ext[:1], 200, size, unix.SEEK_DATA); got != -1 {
		t.Errorf("SEEK_DATA after the last data: %d", got)
	}
	if got := seekIn([]volmap.Extent{{Off: 400, Len: 10}}, 200, size, unix.SEEK_DATA); got != -1 {
		t.Errorf("SEEK_DATA with data only past the end: %d", got)
	}
}

// A write that completes while the mapping is read is data, whatever the
// mapping says; one after the reading too; a drop makes the next seek
// read again.
func TestAllocMapWrites(t *testing.T) {
	m := &allocMap{}
	reads := 0
	load := func() ([]volmap.Extent, error) {
		reads++
		if reads == 1 {
			m.wrote(1000, 10) // completes during the reading
		}
		return []volmap.Extent{{Off: 0, Len: 100}}, nil
	}
	if pos, ok, err := m.seek(500, 2000, unix.SEEK_DATA, load); !ok || err != nil || pos != 1000 {
		t.Fatalf("SEEK_DATA over a write made during the reading: %d %v %v", pos, ok, err)
	}
	m.wrote(1500, 10)
	if pos, _, _ := m.seek(1200, 2000, unix.SEEK_DATA, load); pos != 1500 {
		t.Fatalf("SEEK_DATA over a later write: %d", pos)
	}
	if reads != 1 {
		t.Fatalf("%d readings for a cached map", reads)
	}
	m.drop()
	if pos, _, _ := m.seek(1200, 2000, unix.SEEK_DATA, load); pos != -1 || reads != 2 {
		t.Fatalf("after a drop: %d, %d readings", pos, reads)
	}

	// A failed reading: all data (not ok) and no retry for a while.
	m = &allocMap{}
	fail := func() ([]volmap.Extent, error) { reads++; return nil, errors.New("no thin_dump") }
	reads = 0
	if _, ok, err := m.seek(0, 10, unix.SEEK_HOLE, fail); ok || err == nil {
		t.Fatalf("failed reading: ok %v err %v", ok, err)
	}
	if _, ok, err := m.seek(0, 10, unix.SEEK_HOLE, fail); ok || err != nil || reads != 1 {
		t.Fatalf("right after a failed reading: ok %v err %v, %d readings", ok, err, reads)
	}

	// A drop during the reading: its answer is used, not kept.
	m = &allocMap{}
	reads = 0
	dropping := func() ([]volmap.Extent, error) { reads++; m.drop(); return nil, nil }
	m.seek(0, 10, unix.SEEK_HOLE, dropping)
	m.seek(0, 10, unix.SEEK_HOLE, dropping)
	if reads != 2 {
		t.Fatalf("a reading overtaken by a drop was kept (%d readings)", reads)
	}
}

func TestZeroWrite(t *testing.T) {
	d := &device{bs: 512, unmapUnit: 64 << 10}
	z := make([]byte, 128<<10)
	if !d.zeroWrite(z, 0) || !d.zeroWrite(z, 4096) {
		t.Fatal("zeros covering a chunk")
	}
	if d.zeroWrite(z[:64<<10], 4096) {
		t.Fatal("zeros covering no whole chunk")
	}
	z[70000] = 1
	if d.zeroWrite(z, 0) {
		t.Fatal("not all zeros")
	}
	if (&device{bs: 512}).zeroWrite(make([]byte, 1<<20), 0) {
		t.Fatal("not a sparse device")
	}
}

// SEEK_DATA/SEEK_HOLE of a sparse volume follow its mapping, writes made
// after the mapping was read are data at once, and aligned writes of
// zeros (through the io_uring queues where the kernel has them) unmap
// chunks through the driver's Zeroer instead of writing.
func TestSparseSeekAndZeroWrites(t *testing.T) {
	m := newTestMount(t, mountConfig{Config: loopdir.Config{Thin: true, BlockSize: 4096}, Zeroer: true, IOUring: true})
	p := m.path("sp")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(8 * mib); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xa5}, mib)
	for _, off := range []int64{0, 4 * mib} {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	seek := func(off int64, whence int) int64 {
		t.Helper()
		pos, err := unix.Seek(int(f.Fd()), off, whence)
		if errors.Is(err, unix.ENXIO) {
			return -1
		}
		if err != nil {
			t.Fatalf("lseek(%d, %d): %v", off, whence, err)
		}
		return pos
	}
	want := func(off int64, whence int, pos int64) {
		t.Helper()
		if got := seek(off, whence); got != pos {
			t.Fatalf("lseek(%d, %s) = %d, want %d", off, map[int]string{unix.SEEK_DATA: "SEEK_DATA", unix.SEEK_HOLE: "SEEK_HOLE"}[whence], got, pos)
		}
	}
	want(0, unix.SEEK_DATA, 0)
	want(0, unix.SEEK_HOLE, mib)
	want(mib, unix.SEEK_DATA, 4*mib)
	want(4*mib, unix.SEEK_HOLE, 5*mib)
	want(5*mib, unix.SEEK_DATA, -1)

	// Written after the mapping was read: data.
	if _, err := f.WriteAt(data[:4096], 2*mib); err != nil {
		t.Fatal(err)
	}
	want(mib, unix.SEEK_DATA, 2*mib)

	// 1 MiB of zeros over data, O_DIRECT and aligned: the ring's fast
	// path hands it to the handler, which unmaps.
	df, err := os.OpenFile(p, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	zeros := alignedBuf(mib)
	before := m.d.Calls(loopdir.OpZero)
	if _, err := df.WriteAt(zeros, 4*mib); err != nil {
		t.Fatal(err)
	}
	if m.d.Calls(loopdir.OpZero) == before {
		t.Fatal("a write of zeros over whole chunks did not unmap them")
	}
	m.checkZero("sp", 4*mib, mib)
	want(3*mib, unix.SEEK_DATA, -1)
	// Zeros not covering a chunk are written; data stays data.
	before = m.d.Calls(loopdir.OpZero)
	if _, err := df.WriteAt(zeros[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if m.d.Calls(loopdir.OpZero) != before {
		t.Fatal("a 4 KiB write of zeros went to the Zeroer")
	}
	want(0, unix.SEEK_DATA, 0)
	got := make([]byte, mib)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !allZero(got[:4096]) || !bytes.Equal(got[4096:], data[4096:]) {
		t.Fatal("the first MiB is not 4 KiB of zeros and the data")
	}

	// A hole punched drops the map; an unaligned write then sits in the
	// device's page cache, where the driver's mapping does not see it
	// until it is written back: the next reading must still find it.
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 7*mib, mib); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("unaligned"), 6*mib+100); err != nil {
		t.Fatal(err)
	}
	if pos := seek(5*mib, unix.SEEK_DATA); pos < 5*mib || pos > 6*mib+100 {
		t.Fatalf("SEEK_DATA after an unaligned write at %d: %d", 6*mib+100, pos)
	}
}

// alignedBuf is a zeroed buffer aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := 4096 - int(uintptr(unsafe.Pointer(&b[0]))&4095)
	return b[off : off+n]
}
