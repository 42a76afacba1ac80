package fs

import (
	"errors"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
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
