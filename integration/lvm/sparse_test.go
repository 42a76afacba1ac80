package lvm

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Sparse images on a thin pool: copies of a sparse image take the space of
// its data, SEEK_DATA/SEEK_HOLE report the pool's mapping, and zeroing
// (writes of zeros, hole punching, fstrim through a file system) gives
// chunks back to the pool.

const gib = 1 << 30

// span is a byte range.
type span struct{ off, n int64 }

func (s span) end() int64 { return s.off + s.n }

// sparseSource is a raw image of size bytes (10 GiB in the tests) outside
// the mount with 100 MiB of data in four extents (not aligned to the
// pool's chunks), one of which holds 8 MiB of written zeros. It returns
// the image and the ranges that hold non-zero bytes.
func (e *env) sparseSource(name string, size int64) (string, []span) {
	e.t.Helper()
	data := []span{
		{0, 30 * mib},
		{size/5 + 196*kib + 4*kib, 30 * mib},
		{size*3/5 + mib, 30 * mib},
		{size - 10*mib, 10 * mib},
	}
	zeros := span{data[1].off + 10*mib, 8 * mib} // written zeros inside extent 1
	p := filepath.Join(e.base, name)
	f, err := os.Create(p)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		e.t.Fatal(err)
	}
	for i, d := range data {
		b := pseudoRandom(int(d.n), byte(40+i))
		if i == 1 {
			clear(b[zeros.off-d.off : zeros.end()-d.off])
		}
		if _, err := f.WriteAt(b, d.off); err != nil {
			e.t.Fatal(err)
		}
	}
	nonZero := []span{data[0], {data[1].off, zeros.off - data[1].off},
		{zeros.end(), data[1].end() - zeros.end()}, data[2], data[3]}
	return p, nonZero
}

// sameBytes fails the test at the first byte where got differs from want;
// what, if not empty, says what got is.
func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	for i := range want {
		if got[i] != want[i] {
			if what != "" {
				what = " " + what
			}
			t.Fatalf("byte %d%s: %#x, want %#x", i, what, got[i], want[i])
		}
	}
}

// pseudoRandom is n bytes of xorshift32 from seed: the same bytes for a
// given seed, in every test file.
func pseudoRandom(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// poolUsed is how many bytes of the thin pool's data hold chunks.
func (e *env) poolUsed(pool string) int64 {
	e.t.Helper()
	out := sh(e.t, "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size,data_percent", e.vg+"/"+pool)
	f := strings.Fields(out)
	if len(f) != 2 {
		e.t.Fatalf("lvs %s/%s: %q", e.vg, pool, out)
	}
	size, err1 := strconv.ParseInt(f[0], 10, 64)
	pct, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil {
		e.t.Fatalf("lvs %s/%s: %q", e.vg, pool, out)
	}
	return int64(float64(size) * pct / 100)
}

// mapped is what `qemu-img map` says of a raw image: its data ranges.
func mapped(t testing.TB, path string) []span {
	t.Helper()
	out := sh(t, "qemu-img", "map", "-f", "raw", "--output=json", path)
	var rows []struct {
		Start, Length int64
		Data          bool
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &rows); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	var data []span
	for _, r := range rows {
		if r.Data {
			data = append(data, span{r.Start, r.Length})
		}
	}
	return data
}

func total(spans []span) (n int64) {
	for _, s := range spans {
		n += s.n
	}
	return n
}

// covers reports whether the sorted ranges in have hold all of s.
func covers(have []span, s span) bool {
	for _, h := range have {
		if h.off <= s.off && s.off < h.end() {
			if s.end() <= h.end() {
				return true
			}
			s = span{h.end(), s.end() - h.end()}
		}
	}
	return false
}

func intersects(have []span, s span) bool {
	for _, h := range have {
		if h.off < s.end() && s.off < h.end() {
			return true
		}
	}
	return false
}

// checkMap checks that qemu-img map of path reports every range of want
// as data, and no more than limit bytes of data in all.
func checkMap(t *testing.T, path string, want []span, limit int64) {
	t.Helper()
	got := mapped(t, path)
	for _, w := range want {
		if !covers(got, w) {
			t.Errorf("qemu-img map of %s: data %v does not cover [%d, %d)", filepath.Base(path), got, w.off, w.end())
		}
	}
	if n := total(got); n > limit {
		t.Errorf("qemu-img map of %s reports %d MiB of data (want at most %d MiB): %v",
			filepath.Base(path), n/mib, limit/mib, got)
	}
}

// sameSparse compares a copy of a sparse image with its source: cmp
// byte for byte over every range either file reports as data (SEEK_DATA,
// through qemu-img map), and reads of the copy's holes sampled every GiB
// must be zeros. A full cmp reads 10 GiB of holes through FUSE, minutes in
// the TCG guest; a hole of the copy reads zeros by construction (dm-thin
// never maps it), and checkMap has made sure that the source's non-zero
// bytes all lie in the copy's data.
func sameSparse(t *testing.T, src, dst string, srcData []span) {
	t.Helper()
	start := time.Now()
	dstData := mapped(t, dst)
	for _, r := range append(append([]span(nil), srcData...), dstData...) {
		skip := strconv.FormatInt(r.off, 10)
		if out, err := try("cmp", "-i", skip+":"+skip, "-n", strconv.FormatInt(r.n, 10), src, dst); err != nil {
			t.Fatalf("cmp of [%d, %d): %v\n%s", r.off, r.end(), err, out)
		}
	}
	for off := int64(0); off < size(t, dst); off += gib {
		if intersects(dstData, span{off, mib}) {
			continue
		}
		if b := fileBytes(t, dst, off, mib); !allZero(b) {
			t.Fatalf("the copy's hole at %d reads non-zero bytes", off)
		}
	}
	t.Logf("compared in %v", time.Since(start).Round(time.Millisecond))
}

// copySparse copies an image of imgSize bytes with 92 MiB of non-zero data
// into a thin mount with a tool, and checks that the pool grew by about
// that much, that qemu-img map of the copy reports the data, and the
// bytes.
func copySparse(t *testing.T, name string, imgSize int64, args func(src, dst string) []string) {
	e := newVG(t)
	e.thinPool("pool", "2g")
	m := e.mount("--thin-pool", "pool")
	src, nonZero := e.sparseSource("src.raw", imgSize)
	dst := m.path(name + ".raw")
	before := e.poolUsed("pool")
	start := time.Now()
	cmd := args(src, dst)
	sh(t, cmd[0], cmd[1:]...)
	took := time.Since(start)
	grown := e.poolUsed("pool") - before
	t.Logf("%s: %v, pool (chunk %s) grew by %.1f MiB", strings.Join(cmd, " "), took.Round(time.Millisecond),
		strings.TrimSpace(sh(t, "lvs", "--noheadings", "-o", "chunk_size", e.vg+"/pool")), float64(grown)/mib)
	if got := size(t, dst); got != imgSize {
		t.Fatalf("size of the copy: %d, want %d", got, imgSize)
	}
	// 92 MiB of data, a partial chunk at either end of each extent; not
	// the 10 GiB of the file.
	if grown < 90*mib || grown > 110*mib {
		t.Errorf("copying with %s grew the pool by %d MiB, want about 92 MiB", name, grown/mib)
	}
	checkMap(t, dst, nonZero, 120*mib)
	sameSparse(t, src, dst, nonZero)
}

func TestSparseCopyCp(t *testing.T) {
	copySparse(t, "cp", 10*gib, func(src, dst string) []string { return []string{"cp", src, dst} })
}

func TestSparseCopyCpAlways(t *testing.T) {
	copySparse(t, "cp-always", 10*gib, func(src, dst string) []string { return []string{"cp", "--sparse=always", src, dst} })
}

func TestSparseCopyQemuImg(t *testing.T) {
	copySparse(t, "qemu-img", 10*gib, func(src, dst string) []string {
		return []string{"qemu-img", "convert", "-f", "raw", "-O", "raw", src, dst}
	})
}

// rsync reads every byte of its source (it does not seek over holes):
// 10 GiB through a pipe take many minutes in the TCG guest, so its
// image is 2 GiB.
func TestSparseCopyRsync(t *testing.T) {
	copySparse(t, "rsync", 2*gib, func(src, dst string) []string { return []string{"rsync", "-S", src, dst} })
}

// Zeros written over data (plain writes, and through the fast path with
// O_DIRECT), a hole punched: the chunks go back to the pool, the range
// reads as zeros and is a hole for SEEK_DATA, the rest keeps its bytes.
func TestSparseZeroing(t *testing.T) {
	e := newVG(t)
	e.thinPool("pool", "1g")
	m := e.mount("--thin-pool", "pool")
	src := e.file("data", 64*mib, 7)
	img := m.path("img")
	sh(t, "cp", src, img)
	// Held open throughout: the mapping volfs read stays cached, and
	// writes must update it.
	hold(t, img, "")
	checkMap(t, img, []span{{0, 64 * mib}}, 64*mib)
	want := fileBytes(t, src, 0, 64*mib)

	for _, tc := range []struct {
		name string
		r    span
		cmd  []string
	}{
		// Whole MiBs: every chunk covered.
		{"dd", span{8 * mib, 16 * mib}, []string{"dd", "if=/dev/zero", "of=" + img, "bs=1M", "seek=8", "count=16", "conv=notrunc", "status=none"}},
		// O_DIRECT, not aligned to chunks: the edges are written.
		{"dd-direct-unaligned", span{28*mib + 4*kib, 8 * mib}, []string{"dd", "if=/dev/zero", "of=" + img, "bs=1M",
			"seek=" + strconv.Itoa(28*mib+4*kib), "oflag=direct,seek_bytes", "count=8", "conv=notrunc", "status=none"}},
		{"punch-hole", span{40*mib + 512, 12 * mib}, []string{"fallocate", "--punch-hole",
			"-o", strconv.Itoa(40*mib + 512), "-l", strconv.Itoa(12 * mib), img}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.poolUsed("pool")
			sh(t, tc.cmd[0], tc.cmd[1:]...)
			freed := before - e.poolUsed("pool")
			t.Logf("%s: the pool got %.1f MiB back", tc.name, float64(freed)/mib)
			if freed < tc.r.n-mib {
				t.Errorf("zeroing %d MiB gave %d KiB back to the pool", tc.r.n/mib, freed/kib)
			}
			clear(want[tc.r.off:tc.r.end()])
			got := fileBytes(t, img, 0, 64*mib)
			sameBytes(t, "", got, want)
			// The zeroed range is no longer data (but for the
			// partial chunks at its ends).
			for _, d := range mapped(t, img) {
				if d.off <= tc.r.off+64*kib && d.end() >= tc.r.end()-64*kib {
					t.Errorf("qemu-img map still reports [%d, %d) as data: %v", tc.r.off, tc.r.end(), mapped(t, img))
				}
			}
		})
	}
	// A write after the map was read is data at once.
	sh(t, "dd", "if="+src, "of="+img, "bs=64k", "count=1", "seek=200", "conv=notrunc", "status=none")
	checkMap(t, img, []span{{200 * 64 * kib, 64 * kib}}, 64*mib)
}

// A pool that does not zero new chunks (lvcreate -Zn) gets zeros written,
// never unmapped: a chunk unmapped there and provisioned again by a later
// partial write would show the disk's old contents around that write.
func TestSparseNoZeroingPool(t *testing.T) {
	e := newVG(t)
	sh(t, "lvcreate", "-q", "--type", "thin-pool", "-Zn", "-L", "256m", "-n", "pool", e.vg)
	sh(t, "lvchange", "-q", "--errorwhenfull", "y", e.vg+"/pool")
	m := e.mount("--thin-pool", "pool")
	src := e.file("data", 16*mib, 9)
	img := m.path("img")
	sh(t, "cp", src, img)
	hold(t, img, "")
	for _, cmd := range [][]string{
		{"dd", "if=/dev/zero", "of=" + img, "bs=1M", "seek=4", "count=4", "conv=notrunc", "status=none"},
		{"fallocate", "--punch-hole", "-o", strconv.Itoa(10 * mib), "-l", strconv.Itoa(4 * mib), img},
	} {
		before := e.poolUsed("pool")
		sh(t, cmd[0], cmd[1:]...)
		if freed := before - e.poolUsed("pool"); freed > 0 {
			t.Errorf("%s on a pool without zeroing unmapped %d KiB", cmd[0], freed/kib)
		}
	}
	want := fileBytes(t, src, 0, 16*mib)
	clear(want[4*mib : 8*mib])
	clear(want[10*mib : 14*mib])
	got := fileBytes(t, img, 0, 16*mib)
	sameBytes(t, "", got, want)
}

// A metadata snapshot reserved in the pool by someone else (another
// reader, or a volfs killed between its reserve and release) is not
// released by volfs (its holder may be reading it): seeks answer "all
// data", which is never wrong, and the log says how to release it.
func TestSparseForeignMetadataSnapshot(t *testing.T) {
	e := newVG(t)
	e.thinPool("pool", "256m")
	m := e.mount("--thin-pool", "pool")
	img := m.path("img")
	sh(t, "truncate", "-s", "64M", img)
	sh(t, "dd", "if="+e.file("data", mib, 3), "of="+img, "bs=1M", "conv=notrunc,fsync", "status=none")
	tpool := strings.ReplaceAll(e.vg, "-", "--") + "-pool-tpool"
	sh(t, "dmsetup", "message", tpool, "0", "reserve_metadata_snap")
	t.Cleanup(func() { _, _ = try("dmsetup", "message", tpool, "0", "release_metadata_snap") })
	if got := mapped(t, img); total(got) != 64*mib {
		t.Errorf("qemu-img map while another reader holds the metadata snapshot: %v, want all data", got)
	}
	if !strings.Contains(m.logText(), "release it: dmsetup message "+tpool+" 0 release_metadata_snap") {
		t.Errorf("the log does not say how to release the metadata snapshot:\n%s", m.logText())
	}
	// Still reserved: volfs did not release what it had not reserved.
	if _, err := try("dmsetup", "message", tpool, "0", "reserve_metadata_snap"); err == nil {
		t.Error("the metadata snapshot was released by volfs")
	}
}

// A thin LV with an external origin reads the origin where it has no
// chunk of its own: zeros written to it must be written, not unmapped
// (an unmap would bring the origin's bytes back).
func TestSparseExternalOriginZeroWrite(t *testing.T) {
	e := newVG(t)
	e.thinPool("pool", "256m")
	sh(t, "lvcreate", "-q", "-L", "16m", "-n", "base", e.vg)
	sh(t, "dd", "if="+e.file("data", 16*mib, 5), "of=/dev/"+e.vg+"/base", "bs=1M", "oflag=direct", "status=none")
	sh(t, "lvchange", "-q", "-an", "-pr", e.vg+"/base")
	sh(t, "lvcreate", "-q", "-s", "--thinpool", "pool", "-n", "img", e.vg+"/base")
	m := e.mount("--thin-pool", "pool")
	img := m.path("img")
	sh(t, "dd", "if=/dev/zero", "of="+img, "bs=1M", "seek=4", "count=4", "conv=notrunc,fsync", "status=none")
	want := fileBytes(t, e.file("data", 16*mib, 5), 0, 16*mib)
	clear(want[4*mib : 8*mib])
	got := fileBytes(t, img, 0, 16*mib)
	sameBytes(t, "of a thin LV with an external origin after writing zeros", got, want)
}

// A file system on an image (through a loop device) gives the space of
// deleted files back to the pool with fstrim.
func TestSparseTrim(t *testing.T) {
	e := newVG(t)
	e.thinPool("pool", "2g")
	m := e.mount("--thin-pool", "pool")
	img := m.path("fs.img")
	sh(t, "truncate", "-s", "1G", img)
	loop := strings.TrimSpace(sh(t, "losetup", "--find", "--show", "--direct-io=on", img))
	t.Cleanup(func() { _, _ = try("losetup", "-d", loop) })
	sh(t, "mkfs.ext4", "-q", "-F", loop)
	dir := filepath.Join(e.base, "ext4")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sh(t, "mount", loop, dir)
	fsMounted := true
	t.Cleanup(func() {
		if fsMounted {
			_, _ = try("umount", dir)
		}
	})
	empty := e.poolUsed("pool")
	big := e.file("big", 200*mib, 9)
	sh(t, "cp", big, filepath.Join(dir, "big"))
	sh(t, "sync", "-f", filepath.Join(dir, "big"))
	full := e.poolUsed("pool")
	t.Logf("ext4 on a 1 GiB image: %.1f MiB in the pool; with a 200 MiB file: %.1f MiB",
		float64(empty)/mib, float64(full)/mib)
	if full-empty < 190*mib {
		t.Fatalf("writing 200 MiB grew the pool by %d MiB", (full-empty)/mib)
	}
	if err := os.Remove(filepath.Join(dir, "big")); err != nil {
		t.Fatal(err)
	}
	sh(t, "sync", "-f", dir)
	t.Logf("fstrim: %s", strings.TrimSpace(sh(t, "fstrim", "-v", dir)))
	trimmed := e.poolUsed("pool")
	t.Logf("after rm and fstrim: %.1f MiB", float64(trimmed)/mib)
	if trimmed-empty > 10*mib {
		t.Errorf("fstrim left %d MiB of the deleted file in the pool", (trimmed-empty)/mib)
	}
	sh(t, "umount", dir)
	fsMounted = false
	sh(t, "fsck.ext4", "-fn", loop)
	sh(t, "losetup", "-d", loop)
}
