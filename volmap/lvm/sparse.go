package lvm

import (
	"bytes"
	"cmp"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/volmap"
)

var _ volmap.Sparser = (*Driver)(nil)

// mapTimeout bounds one reading of a thin volume's mapping (dmsetup and
// thin_dump on the pool's metadata).
const mapTimeout = 2 * time.Minute

// UnmapUnit is the pool's chunk size for a thin LV whose pool passes
// discards on to dm-thin (Zero unmaps whole chunks then), 0 otherwise.
func (d *Driver) UnmapUnit(ctx context.Context, name string) (int64, error) {
	lv, err := d.file(ctx, name)
	if err != nil || !lv.Thin() {
		return 0, err
	}
	return d.chunkOf(ctx, lv), nil
}

// chunkOf is the chunk size Zero unmaps in lv's pool: 0 when lv is not
// thin, has an external origin, or its pool is unknown, ignores discards
// or does not zero new chunks. On a pool without zeroing an unmapped
// chunk that a later partial write provisions again would show, around
// that write, whatever the disk held (another image's old data): zeros
// are written instead.
func (d *Driver) chunkOf(ctx context.Context, lv LV) int64 {
	if !lv.Thin() {
		return 0
	}
	l, err := d.listing(ctx)
	if err != nil {
		return 0
	}
	if lv.Origin != "" {
		// An external origin (a thin LV's origin outside its pool, or
		// not thin): an unmapped chunk reads the origin's bytes, so a
		// zero write must write zeros.
		if o, ok := l.lvs[lv.Origin]; !ok || !o.Thin() || o.Pool != lv.Pool {
			return 0
		}
	}
	if pool, ok := l.lvs[lv.Pool]; ok && pool.Discards != "ignore" && pool.ZeroesNew {
		return pool.ChunkSize
	}
	return 0
}

// Allocated reads the mapping of a thin LV from its pool's metadata: a
// metadata snapshot is reserved in the pool (so the live metadata can be
// read consistently while the pool runs), thin_dump prints the LV's
// mappings from it, and the snapshot is released. The pool commits its
// metadata when the snapshot is reserved, so every write that completed
// before the call is in the mapping. Anything that is not a plain thin
// device (linear, a thin LV with an external origin, whose unmapped
// chunks read the origin) is all data.
func (d *Driver) Allocated(ctx context.Context, name string, f *os.File) ([]volmap.Extent, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("mapping of %s: fstat %s: %w", name, f.Name(), err)
	}
	size, err := volmap.DeviceSize(f)
	if err != nil {
		return nil, fmt.Errorf("mapping of %s: %w", name, err)
	}
	all := []volmap.Extent{{Off: 0, Len: size}}
	ctx, cancel := context.WithTimeout(ctx, mapTimeout)
	defer cancel()
	thin, err := d.dmTable(ctx, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	if err != nil {
		return nil, fmt.Errorf("mapping of %s: %w", name, err)
	}
	t, ok := parseThinTable(thin)
	if !ok {
		return all, nil
	}
	poolName, err := dmName(t.poolDev)
	if err != nil {
		return nil, fmt.Errorf("mapping of %s: the pool of %s: %w", name, f.Name(), err)
	}
	poolTable, err := d.dmTable(ctx, t.poolDev.major, t.poolDev.minor)
	if err != nil {
		return nil, fmt.Errorf("mapping of %s: %w", name, err)
	}
	p, ok := parsePoolTable(poolTable)
	if !ok {
		return nil, fmt.Errorf("mapping of %s: %s is not a thin pool: %q", name, poolName, poolTable)
	}
	metaName, err := dmName(p.metaDev)
	if err != nil {
		return nil, fmt.Errorf("mapping of %s: the metadata of pool %s: %w", name, poolName, err)
	}
	metaPath := "/dev/mapper/" + metaName
	var mst unix.Stat_t
	if err := unix.Stat(metaPath, &mst); err != nil || mst.Mode&unix.S_IFMT != unix.S_IFBLK ||
		unix.Major(mst.Rdev) != p.metaDev.major || unix.Minor(mst.Rdev) != p.metaDev.minor {
		return nil, fmt.Errorf("mapping of %s: %s is not the metadata device %d:%d of pool %s (%v)",
			name, metaPath, p.metaDev.major, p.metaDev.minor, poolName, err)
	}

	// A pool has one metadata snapshot at a time.
	d.mapMu.Lock()
	defer d.mapMu.Unlock()
	reserve := func() error {
		_, err := d.lvm.Tool(ctx, "dmsetup", "message", poolName, "0", "reserve_metadata_snap")
		return err
	}
	// A pool has one metadata snapshot: "busy" means another reader holds
	// it (another volfs mount of the VG, a backup tool's thin_delta), or a
	// volfs killed between its reserve and release left it. Only its
	// holder may release it (a reader whose snapshot is released reads
	// freed blocks: wrong mappings), so wait a little for it, then give up
	// (seeks answer "all data", which is always right) and say what to do.
	err = reserve()
	for try := 0; try < 3 && isBusy(err); try++ {
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
		err = reserve()
	}
	if isBusy(err) {
		err = fmt.Errorf("%w: another reader holds the pool's metadata snapshot; if nothing reads it (a volfs "+
			"that was killed left it), release it: dmsetup message %s 0 release_metadata_snap", err, poolName)
	}
	if err != nil {
		return nil, fmt.Errorf("mapping of %s: reserve a metadata snapshot of pool %s: %w", name, poolName, err)
	}
	defer func() {
		// Released even when ctx ended: a snapshot left reserved makes
		// every later reservation fail (and pins metadata blocks).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := d.lvm.Tool(rctx, "dmsetup", "message", poolName, "0", "release_metadata_snap"); err != nil {
			d.log.Error("releasing the metadata snapshot of a thin pool failed; release it with "+
				"`dmsetup message "+poolName+" 0 release_metadata_snap`", "pool", poolName, "err", err)
		}
	}()
	out, err := d.lvm.Tool(ctx, "thin_dump", "--metadata-snap", "--dev-id", strconv.FormatUint(t.devID, 10),
		"-f", "xml", metaPath)
	if err != nil {
		return nil, fmt.Errorf("mapping of %s (thin device %d of pool %s): %w", name, t.devID, poolName, err)
	}
	ext, err := parseThinDump(bytes.NewReader(out), t.devID)
	if err != nil {
		return nil, fmt.Errorf("mapping of %s (thin device %d of pool %s): %w", name, t.devID, poolName, err)
	}
	return clipExtents(ext, size), nil
}

// dmTable returns the device-mapper table of the device major:minor.
func (d *Driver) dmTable(ctx context.Context, major, minor uint32) (string, error) {
	out, err := d.lvm.Tool(ctx, "dmsetup", "table", "-j", strconv.FormatUint(uint64(major), 10),
		"-m", strconv.FormatUint(uint64(minor), 10))
	if err != nil {
		return "", fmt.Errorf("table of device %d:%d: %w", major, minor, err)
	}
	return string(out), nil
}

type devNum struct{ major, minor uint32 }

func parseDevNum(s string) (devNum, bool) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return devNum{}, false
	}
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)
	return devNum{uint32(ma), uint32(mi)}, err1 == nil && err2 == nil
}

// dmName is the device-mapper name of a device (its /dev/mapper node).
func dmName(n devNum) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/dm/name", n.major, n.minor))
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(string(b))
	if name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("device %d:%d has no usable device-mapper name (%q)", n.major, n.minor, name)
	}
	return name, nil
}

type thinTable struct {
	poolDev devNum
	devID   uint64
}

// parseThinTable reads "0 LEN thin POOL DEVID" (one segment, no external
// origin): the only tables whose unmapped chunks read as zeros.
func parseThinTable(table string) (thinTable, bool) {
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 1 {
		return thinTable{}, false
	}
	f := strings.Fields(lines[0])
	if len(f) != 5 || f[0] != "0" || f[2] != "thin" {
		return thinTable{}, false
	}
	pool, ok := parseDevNum(f[3])
	id, err := strconv.ParseUint(f[4], 10, 64)
	if !ok || err != nil {
		return thinTable{}, false
	}
	return thinTable{poolDev: pool, devID: id}, true
}

type poolTable struct {
	metaDev devNum
}

// parsePoolTable reads "0 LEN thin-pool META DATA BLOCKSIZE LOWWATER ...".
func parsePoolTable(table string) (poolTable, bool) {
	f := strings.Fields(strings.TrimSpace(table))
	if len(f) < 7 || f[2] != "thin-pool" {
		return poolTable{}, false
	}
	m, ok := parseDevNum(f[3])
	return poolTable{metaDev: m}, ok
}

// parseThinDump reads the mappings of device devID from thin_dump's XML
// and returns them in bytes, merged where adjacent.
func parseThinDump(r io.Reader, devID uint64) ([]volmap.Extent, error) {
	dec := xml.NewDecoder(r)
	var blockSize int64 // bytes
	var ext []volmap.Extent
	in, seen := false, false
	add := func(off, n int64) {
		if k := len(ext); k > 0 && ext[k-1].Off+ext[k-1].Len == off {
			ext[k-1].Len += n
			return
		}
		ext = append(ext, volmap.Extent{Off: off, Len: n})
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("thin_dump output: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			a := func(name string) (int64, error) {
				for _, at := range t.Attr {
					if at.Name.Local == name {
						v, err := strconv.ParseInt(at.Value, 10, 64)
						if err != nil || v < 0 {
							return 0, fmt.Errorf("thin_dump output: <%s %s=%q>", t.Name.Local, name, at.Value)
						}
						return v, nil
					}
				}
				return 0, fmt.Errorf("thin_dump output: <%s> without %s", t.Name.Local, name)
			}
			switch t.Name.Local {
			case "superblock":
				sectors, err := a("data_block_size")
				if err != nil {
					return nil, err
				}
				if sectors == 0 || sectors > math.MaxInt64/512 {
					return nil, fmt.Errorf("thin_dump output: data_block_size %d", sectors)
				}
				blockSize = sectors * 512
			case "device":
				id, err := a("dev_id")
				if err != nil {
					return nil, err
				}
				in = uint64(id) == devID
				seen = seen || in
			case "range_mapping", "single_mapping":
				if !in {
					continue
				}
				if blockSize == 0 {
					return nil, errors.New("thin_dump output: a mapping before the superblock")
				}
				var origin, n int64
				if t.Name.Local == "range_mapping" {
					if origin, err = a("origin_begin"); err == nil {
						n, err = a("length")
					}
				} else {
					origin, err = a("origin_block")
					n = 1
				}
				if err != nil {
					return nil, err
				}
				// Blocks past 2^63 bytes would wrap to negative offsets.
				if limit := math.MaxInt64 / blockSize; origin > limit || n > limit-origin {
					return nil, fmt.Errorf("thin_dump output: blocks %d+%d are past the largest offset", origin, n)
				}
				if n > 0 {
					add(origin*blockSize, n*blockSize)
				}
			}
		case xml.EndElement:
			if t.Name.Local == "device" {
				in = false
			}
		}
	}
	if !seen {
		return nil, fmt.Errorf("thin_dump output: no device %d", devID)
	}
	// thin_dump lists mappings in origin order; sort anyway, cheaply, in
	// case a version does not.
	return sortMerge(ext), nil
}

// sortMerge sorts extents and merges overlapping or adjacent ones.
func sortMerge(ext []volmap.Extent) []volmap.Extent {
	sorted := true
	for i := 1; i < len(ext); i++ {
		if ext[i].Off < ext[i-1].Off {
			sorted = false
			break
		}
	}
	if !sorted {
		slices.SortFunc(ext, func(a, b volmap.Extent) int { return cmp.Compare(a.Off, b.Off) })
	}
	out := ext[:0]
	for _, e := range ext {
		if k := len(out); k > 0 && out[k-1].Off+out[k-1].Len >= e.Off {
			out[k-1].Len = max(out[k-1].Off+out[k-1].Len, e.Off+e.Len) - out[k-1].Off
			continue
		}
		out = append(out, e)
	}
	return out
}

// clipExtents drops what lies past size.
func clipExtents(ext []volmap.Extent, size int64) []volmap.Extent {
	out := ext[:0]
	for _, e := range ext {
		if e.Off >= size {
			break
		}
		e.Len = min(e.Len, size-e.Off)
		out = append(out, e)
	}
	return out
}

// isBusy reports whether a dmsetup message failed because the pool already
// has a metadata snapshot.
func isBusy(err error) bool {
	ce := (*CmdError)(nil)
	return errors.As(err, &ce) && strings.Contains(ce.Stderr, "busy")
}
