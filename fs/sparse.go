package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
)

// Sparse images (volmap.Sparser, thin volumes): SEEK_DATA and SEEK_HOLE
// answer from the allocator's mapping of the volume, and writes of zeros
// over whole chunks unmap them instead of allocating them.
//
// The mapping costs a few commands (a thin_dump of the pool's metadata),
// so it is read once per open device and kept; every write through volfs
// adds its range to it as data, every zeroing or hole punched drops it.
// A range the map calls data may read as zeros (always allowed); a range
// written through volfs is never called a hole: a write that completes
// while the mapping is being read is recorded and added to it. Writes by
// other programs straight to the volume's device are not seen until the
// last close drops the map.

// maxMapExtents bounds a cached map; a larger one is dropped and read
// again at the next seek.
const maxMapExtents = 1 << 16

// maxDuring bounds the writes recorded while a mapping is read; past it
// the reading is not used.
const maxDuring = 4096

// mapRetry is how long after a failed reading seeks answer "all data"
// without trying again.
const mapRetry = 30 * time.Second

// allocMap is the cached mapping of one open sparse device.
type allocMap struct {
	// readMu makes one reading at a time; taken before mu.
	readMu sync.Mutex

	mu sync.Mutex
	// ext are the data ranges (sorted, disjoint, not adjacent) when ok.
	ext []volmap.Extent
	ok  bool
	// reading: a reading is in flight; writes that complete meanwhile are
	// recorded in during (overflow: more than maxDuring of them).
	reading  bool
	during   []volmap.Extent
	overflow bool
	// gen counts drops (zeroing, holes): a reading that started before
	// one is not kept.
	gen uint64
	// failed is when the last reading failed.
	failed time.Time
}

// wrote records that [off, off+n) holds data now.
func (m *allocMap) wrote(off, n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.reading {
		if len(m.during) < maxDuring {
			m.during = append(m.during, volmap.Extent{Off: off, Len: n})
		} else {
			m.overflow = true
		}
	}
	if m.ok {
		m.ext = addExtent(m.ext, off, n)
		if len(m.ext) > maxMapExtents {
			m.ok, m.ext = false, nil
		}
	}
}

// drop forgets the map: a range was zeroed or unmapped, the next seek
// reads the mapping again.
func (m *allocMap) drop() {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.ok, m.ext = false, nil
	m.gen++
	m.mu.Unlock()
}

// seek answers SEEK_DATA or SEEK_HOLE at off for a file of size bytes,
// reading the mapping with load if there is none. ok is false when the
// mapping could not be had (the caller says "all data").
func (m *allocMap) seek(off, size int64, whence int, load func() ([]volmap.Extent, error)) (int64, bool, error) {
	m.mu.Lock()
	if m.ok {
		defer m.mu.Unlock()
		return seekIn(m.ext, off, size, whence), true, nil
	}
	m.mu.Unlock()

	m.readMu.Lock()
	defer m.readMu.Unlock()
	m.mu.Lock()
	if m.ok {
		defer m.mu.Unlock()
		return seekIn(m.ext, off, size, whence), true, nil
	}
	if !m.failed.IsZero() && time.Since(m.failed) < mapRetry {
		m.mu.Unlock()
		return 0, false, nil
	}
	gen := m.gen
	m.reading, m.during, m.overflow = true, nil, false
	m.mu.Unlock()

	ext, err := load()

	m.mu.Lock()
	defer m.mu.Unlock()
	m.reading = false
	during, overflow := m.during, m.overflow
	m.during = nil
	if err != nil {
		m.failed = time.Now()
		return 0, false, err
	}
	if overflow {
		return 0, false, nil
	}
	for _, w := range during {
		ext = addExtent(ext, w.Off, w.Len)
	}
	if gen == m.gen && len(ext) <= maxMapExtents {
		m.ext, m.ok = ext, true
	}
	return seekIn(ext, off, size, whence), true, nil
}

// seekIn answers SEEK_DATA or SEEK_HOLE at off (< size) from the data
// ranges ext; -1 is ENXIO (no data at or after off).
func seekIn(ext []volmap.Extent, off, size int64, whence int) int64 {
	// The first range that ends after off.
	i := sort.Search(len(ext), func(i int) bool { return ext[i].Off+ext[i].Len > off })
	if whence == unix.SEEK_DATA {
		if i == len(ext) || ext[i].Off >= size {
			return -1
		}
		return max(off, ext[i].Off)
	}
	if i == len(ext) || ext[i].Off > off {
		return off
	}
	return min(ext[i].Off+ext[i].Len, size)
}

// addExtent adds [off, off+n) to the sorted, disjoint ranges ext, merging
// what it overlaps or touches.
func addExtent(ext []volmap.Extent, off, n int64) []volmap.Extent {
	end := off + n
	// The first range that ends at or after off, and the first that
	// starts after end: those in between merge.
	i := sort.Search(len(ext), func(i int) bool { return ext[i].Off+ext[i].Len >= off })
	j := sort.Search(len(ext), func(j int) bool { return ext[j].Off > end })
	if i < j {
		off = min(off, ext[i].Off)
		end = max(end, ext[j-1].Off+ext[j-1].Len)
	}
	return slices.Replace(ext, i, j, volmap.Extent{Off: off, Len: end - off})
}

// zeros is compared against to find writes of zeros.
var zeros = make([]byte, 64<<10)

// allZero reports whether p holds only zeros.
func allZero(p []byte) bool {
	for len(p) > 0 {
		k := min(len(p), len(zeros))
		if !bytes.Equal(p[:k], zeros[:k]) {
			return false
		}
		p = p[k:]
	}
	return true
}

// zeroWrite reports whether a write of p at off should be served by
// writeZeroChunks: it is all zeros and covers at least one whole chunk
// that the driver unmaps (the cheap tests first).
func (d *device) zeroWrite(p []byte, off int64) bool {
	u := d.unmapUnit
	if u <= 0 || int64(len(p)) < u {
		return false
	}
	first := (off + u - 1) / u * u
	if first+u > off+int64(len(p)) {
		return false
	}
	return p[0] == 0 && p[len(p)-1] == 0 && allZero(p)
}

// writeZeroChunks writes the zeros p at off: the whole chunks inside are
// unmapped with the driver's Zeroer (they read as zeros and take no
// space), the partial chunks at either end are written. If unmapping
// fails the zeros are written.
func (n *Image) writeZeroChunks(ctx context.Context, d *device, p []byte, off int64) (int, error) {
	u := d.unmapUnit
	end := off + int64(len(p))
	first := (off + u - 1) / u * u
	last := end / u * u
	if first > off {
		if k, err := d.writeAt(p[:first-off], off); err != nil {
			return k, err
		}
	}
	z, _ := n.root.drv.(volmap.Zeroer)
	var err error
	if z == nil {
		err = errors.ErrUnsupported
	} else {
		err = z.Zero(ctx, n.name, d.direct, first, last-first)
	}
	d.alloc.drop()
	if err != nil {
		n.root.log.Debug("unmapping zeroed chunks failed; writing the zeros",
			slog.String("volume", n.name), slog.Int64("offset", first), slog.Int64("length", last-first), slog.Any("err", err))
		if k, err := d.writeAt(p[first-off:last-off], first); err != nil {
			return int(first-off) + k, err
		}
	}
	if last < end {
		if k, err := d.writeAt(p[last-off:], last); err != nil {
			return int(last-off) + k, err
		}
	}
	return len(p), nil
}

// setupSparse looks up, for a newly opened device, whether its volume is
// sparse: then seeks read its mapping and zero writes may unmap.
func (n *Image) setupSparseLocked(ctx context.Context, d *device) {
	sp, ok := n.root.drv.(volmap.Sparser)
	if !ok || !n.vol.Thin {
		return
	}
	d.alloc = &allocMap{}
	if _, ok := n.root.drv.(volmap.Zeroer); !ok {
		return
	}
	u, err := sp.UnmapUnit(ctx, n.name)
	if err != nil {
		n.root.log.Warn("the chunk size of a thin volume is unknown; writes of zeros allocate",
			slog.String("volume", n.name), slog.Any("err", err))
		return
	}
	if u > 0 && u%d.bs == 0 && u <= maxIO {
		d.unmapUnit = u
	}
}

// Lseek answers SEEK_DATA and SEEK_HOLE: from the volume's mapping for a
// sparse volume (see allocMap), else the whole file is data.
func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	n := h.node
	size := n.size.Load()
	if off >= uint64(size) {
		return 0, syscall.ENXIO
	}
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE {
		return 0, syscall.EINVAL
	}
	allData := func() (uint64, syscall.Errno) {
		if whence == unix.SEEK_DATA {
			return off, 0
		}
		return uint64(size), 0
	}
	d := n.acquireDevice()
	if d == nil {
		return allData()
	}
	defer d.release()
	sp, ok := n.root.drv.(volmap.Sparser)
	if d.alloc == nil || !ok {
		return allData()
	}
	pos, ok, err := d.alloc.seek(int64(off), size, int(whence), func() ([]volmap.Extent, error) {
		// Unaligned writes sit in the device's page cache until written
		// back, and the allocator maps their chunks only then: write
		// them out first (writes that complete from now on are
		// recorded by the map itself).
		// The write-back error is the open files' (writeBackLocked):
		// their fsync must still report it.
		const all = unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WRITE | unix.SYNC_FILE_RANGE_WAIT_AFTER
		var err error
		n.syncMu.Lock()
		n.writeBackLocked("write out before reading the mapping", func(fd int) error {
			err = unix.SyncFileRange(fd, 0, 0, all)
			return err
		})
		n.syncMu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("write out before reading the mapping: %w", err)
		}
		start := time.Now()
		ext, err := sp.Allocated(ctx, n.name, d.direct)
		n.root.log.Debug("read the mapping of a sparse volume", slog.String("volume", n.name),
			slog.Int("extents", len(ext)), slog.Duration("took", time.Since(start)), slog.Any("err", err))
		return ext, err
	})
	if err != nil {
		n.root.log.Warn("reading the allocation map failed; SEEK_DATA and SEEK_HOLE report all data for a while",
			slog.String("volume", n.name), slog.Any("err", err))
	}
	if !ok {
		return allData()
	}
	if pos < 0 {
		return 0, syscall.ENXIO
	}
	return uint64(pos), 0
}
