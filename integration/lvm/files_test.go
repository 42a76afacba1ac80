package lvm

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// roundUp is the LV size that holds n bytes: whole extents, at least one.
func roundUp(n int64) int64 { return max((n+extent-1)/extent, 1) * extent }

// waitLV waits until the LV satisfies cond: a file's last close (release)
// reaches the server after close(2) has returned, so trimming and the
// attribute tags follow shortly after.
func (e *env) waitLV(name, what string, cond func(l lv) bool) lv {
	e.t.Helper()
	start := time.Now()
	for {
		lvs, _ := e.lvs()
		l, ok := lvs[name]
		if ok && cond(l) {
			e.t.Logf("%s: %s after %v", name, what, time.Since(start).Round(10*time.Millisecond))
			return l
		}
		if time.Since(start) > 15*time.Second {
			e.t.Fatalf("%s: not %s after 15 s; LV: %+v (found %v)", name, what, l, ok)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wantFileLV waits until the LV of a closed file of size bytes is what
// volfs leaves: trimmed to whole extents, the exact size in a tag when it
// differs, the mount tag.
// (A file whose size is whole extents may record it or not: volfs records
// a size before the LV shrinks to it.)
func (e *env) wantFileLV(name string, size int64) lv {
	e.t.Helper()
	want := roundUp(size)
	return e.waitLV(name, fmt.Sprintf("trimmed to %d bytes, size %d recorded", want, size), func(l lv) bool {
		tag, ok := l.tag("volfs.size")
		return l.Size == want && l.hasTag("volfs") &&
			(!ok && size == l.Size || tag == strconv.FormatInt(size, 10))
	})
}

// TestLinearFiles drives files on linear LVs with real clients; the
// subtests share one VG and mount, each on its own files.
func TestLinearFiles(t *testing.T) {
	e := newVG(t)
	m := e.mount()

	t.Run("cp", func(t *testing.T) {
		for i, n := range []int{1_000_001, 5*mib + 3, 4096} {
			src := e.file(fmt.Sprintf("cp-src%d", i), n, byte(i))
			name := fmt.Sprintf("cp%d", i)
			sh(t, "cp", src, m.path(name))
			// At once: the last close reaches the server after cp exits and
			// races with this lookup.
			if got := size(t, m.path(name)); got != int64(n) {
				t.Fatalf("%s: size %d right after cp, want %d", name, got, n)
			}
			sameData(t, src, m.path(name)) // reads stop at the size
			out := filepath.Join(e.base, name+".out")
			sh(t, "cp", m.path(name), out)
			sameData(t, src, out)
			if l := e.wantFileLV(name, int64(n)); !l.hasTag("volfs.mode=0644") || l.SegType != "linear" {
				t.Errorf("LV %s: %+v", name, l)
			}
		}
		// cp between two files of the mount (copy_file_range in the server).
		sh(t, "cp", m.path("cp0"), m.path("cp0-copy"))
		sameData(t, m.path("cp0"), m.path("cp0-copy"))
		e.wantFileLV("cp0-copy", 1_000_001)
	})

	t.Run("growth", func(t *testing.T) {
		f, err := os.Create(m.path("grow"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		// Created lazily: listed at once, no LV until it needs bytes or
		// a close. Checked without starting a process: a fork closes
		// the child's inherited copy of f at exec, and that close (a
		// FLUSH) creates the LV, as close(2) must.
		if _, err := os.Stat("/dev/mapper/" + e.vg + "-grow"); !m.has("grow") || !os.IsNotExist(err) {
			t.Fatalf("after open(O_CREAT): listed %v, device of an LV: %v", m.has("grow"), err)
		}
		chunk := bytes.Repeat([]byte("volfs"), 200_000) // 1,000,000 bytes
		if _, err := f.WriteAt(chunk, 0); err != nil {
			t.Fatal(err)
		}
		// Writes past the end grow the LV in large steps, not one extent
		// per write.
		if l := e.lv("grow"); l.Size < 64*mib {
			t.Fatalf("LV after the first write: %d bytes, want a step of at least 64 MiB", l.Size)
		}
		if _, err := f.WriteAt(chunk, 100*mib); err != nil {
			t.Fatal(err)
		}
		if l := e.lv("grow"); l.Size < 128*mib {
			t.Fatalf("LV after a write at 100 MiB: %d bytes, want a geometric step to at least 128 MiB", l.Size)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		const n = 100*mib + 1_000_000
		e.wantFileLV("grow", n)
		if got := size(t, m.path("grow")); got != n {
			t.Fatalf("size %d, want %d", got, n)
		}
		// The gap reads as zeros (on a linear LV it held whatever the
		// extents held before).
		g, err := os.Open(m.path("grow"))
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		b := make([]byte, 4*mib)
		for _, off := range []int64{1_000_000, 50 * mib, 100*mib - 4*mib} {
			if _, err := g.ReadAt(b, off); err != nil {
				t.Fatal(err)
			}
			if !allZero(b) {
				t.Fatalf("gap at %d is not zeros", off)
			}
		}
		if _, err := g.ReadAt(b[:len(chunk)], 100*mib); err != nil || !bytes.Equal(b[:len(chunk)], chunk) {
			t.Fatalf("data at 100 MiB: %v", err)
		}
		// Reads stop at the size.
		if k, err := g.ReadAt(b, n-10); k != 10 || err == nil {
			t.Fatalf("read across the end: %d bytes, %v", k, err)
		}
	})

	t.Run("truncate", func(t *testing.T) {
		src := e.file("tr-src", 5*mib+3, 7)
		p := m.path("tr")
		sh(t, "cp", src, p)
		sh(t, "truncate", "-s", "10M", p)
		e.wantFileLV("tr", 10*mib)
		if got := size(t, p); got != 10*mib {
			t.Fatalf("size after truncate -s 10M: %d", got)
		}
		if !allZero(fileBytes(t, p, 5*mib+3, 5*mib-3)) {
			t.Fatal("bytes exposed by growing are not zeros")
		}
		if !bytes.Equal(fileBytes(t, p, 0, 5*mib+3), fileBytes(t, src, 0, 5*mib+3)) {
			t.Fatal("data changed by truncate")
		}
		sh(t, "truncate", "-s", "1000", p)
		e.wantFileLV("tr", 1000)
		sh(t, "truncate", "-s", "6M", p)
		e.wantFileLV("tr", 6*mib)
		if !bytes.Equal(fileBytes(t, p, 0, 1000), fileBytes(t, src, 0, 1000)) {
			t.Fatal("data below the truncation changed")
		}
		if !allZero(fileBytes(t, p, 1000, 6*mib-1000)) {
			t.Fatal("data cut by shrinking came back when the file grew again")
		}
	})

	t.Run("touch", func(t *testing.T) {
		sh(t, "touch", m.path("touched"))
		if !m.has("touched") {
			t.Fatal("touched file not listed")
		}
		// The LV appears at the last close, one extent, size 0 recorded.
		e.wantFileLV("touched", 0)
		if got := size(t, m.path("touched")); got != 0 {
			t.Fatalf("size %d", got)
		}
	})

	t.Run("dd", func(t *testing.T) {
		src := e.file("dd-src", 3*mib+17, 3)
		sh(t, "dd", "if="+src, "of="+m.path("dd"), "bs=64k", "status=none")
		if got := size(t, m.path("dd")); got != 3*mib+17 {
			t.Fatalf("size after dd: %d", got)
		}
		sameData(t, src, m.path("dd"))
		e.wantFileLV("dd", 3*mib+17)
		// seek: dd truncates to the seek offset, then writes; the hole
		// reads as zeros.
		sh(t, "dd", "if="+src, "of="+m.path("dd-seek"), "bs=4k", "seek=100", "count=10", "status=none")
		if got := size(t, m.path("dd-seek")); got != 110*4096 {
			t.Fatalf("size after dd seek=100 count=10: %d", got)
		}
		if !allZero(fileBytes(t, m.path("dd-seek"), 0, 100*4096)) ||
			!bytes.Equal(fileBytes(t, m.path("dd-seek"), 100*4096, 10*4096), fileBytes(t, src, 0, 10*4096)) {
			t.Fatal("dd seek: wrong bytes")
		}
		e.wantFileLV("dd-seek", 110*4096)
		// conv=notrunc into the middle of an existing file.
		sh(t, "dd", "if="+src, "of="+m.path("dd"), "bs=512", "seek=3", "count=5", "conv=notrunc", "status=none")
		if !bytes.Equal(fileBytes(t, m.path("dd"), 1536, 2560), fileBytes(t, src, 0, 2560)) {
			t.Fatal("dd conv=notrunc: wrong bytes")
		}
		if got := size(t, m.path("dd")); got != 3*mib+17 {
			t.Fatalf("size after dd conv=notrunc: %d", got)
		}
	})

	t.Run("mv", func(t *testing.T) {
		a, b := e.file("mv-a", 100_000, 11), e.file("mv-b", 200_000, 12)
		sh(t, "cp", a, m.path("mv-a"))
		sh(t, "cp", b, m.path("mv-b"))
		uuidA := e.wantFileLV("mv-a", 100_000).UUID
		uuidB := e.wantFileLV("mv-b", 200_000).UUID
		sh(t, "mv", m.path("mv-a"), m.path("mv-c"))
		lvs, _ := e.lvs()
		if _, ok := lvs["mv-a"]; ok || lvs["mv-c"].UUID != uuidA {
			t.Fatalf("after mv: %v", names(lvs))
		}
		sameData(t, a, m.path("mv-c"))
		// Over an existing file: it is replaced.
		sh(t, "mv", m.path("mv-b"), m.path("mv-c"))
		lvs, _ = e.lvs()
		if _, ok := lvs["mv-b"]; ok || lvs["mv-c"].UUID != uuidB {
			t.Fatalf("after mv over a file: %v (mv-c %+v)", names(lvs), lvs["mv-c"])
		}
		for n := range lvs {
			if strings.HasPrefix(n, "+2F") {
				t.Fatalf("temporary LV %s left", n)
			}
		}
		if m.has("mv-b") || size(t, m.path("mv-c")) != 200_000 {
			t.Fatalf("listing after mv over a file: %v", m.names())
		}
		sameData(t, b, m.path("mv-c"))
		// Over a file that is open but has no LV yet (created, nothing
		// written): the moved file takes the name.
		f, err := os.OpenFile(m.path("mv-new"), os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		sh(t, "mv", m.path("mv-c"), m.path("mv-new"))
		if m.has("mv-c") || size(t, m.path("mv-new")) != 200_000 {
			t.Fatalf("after mv over a file without an LV: %v, size %d", m.names(), size(t, m.path("mv-new")))
		}
		sameData(t, b, m.path("mv-new"))
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if l := e.wantFileLV("mv-new", 200_000); l.UUID != uuidB {
			t.Fatalf("LV mv-new after the replaced file's last close: %+v", l)
		}
		sameData(t, b, m.path("mv-new"))
	})

	t.Run("rsync", func(t *testing.T) {
		dir := filepath.Join(e.base, "rsync-src")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		mtime := time.Date(2021, 2, 3, 4, 5, 6, 0, time.UTC)
		put := func(name string, n int, seed byte) {
			p := filepath.Join(dir, name)
			if err := os.Rename(e.file("rsync-tmp", n, seed), p); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
		put("r1", 300_000, 21)
		put("r2", 3, 22)
		// Into the mount's root: rsync sets the directory's times too.
		sh(t, "rsync", "-a", dir+"/", m.dir+"/")
		check := func(name string, n int64) lv {
			t.Helper()
			sameData(t, filepath.Join(dir, name), m.path(name))
			st, err := os.Stat(m.path(name))
			if err != nil || st.Size() != n || st.Mode().Perm() != 0o640 || !st.ModTime().Equal(mtime) {
				t.Fatalf("%s after rsync: %v %v", name, st, err)
			}
			l := e.wantFileLV(name, n)
			if v, _ := l.tag("volfs.mtime"); v != fmt.Sprintf("%d.000000000", mtime.Unix()) || !l.hasTag("volfs.mode=0640") {
				t.Fatalf("%s tags: %v", name, l.Tags)
			}
			return l
		}
		check("r1", 300_000)
		check("r2", 3)
		// Changed: rsync writes a temporary file and renames it over r1.
		old := e.lv("r1").UUID
		put("r1", 200_000, 23)
		sh(t, "rsync", "-a", dir+"/", m.dir+"/")
		if l := check("r1", 200_000); l.UUID == old {
			t.Fatal("rsync without --inplace did not replace r1")
		}
		// --inplace writes into the same LV and truncates it.
		old = e.lv("r1").UUID
		put("r1", 100_000, 24)
		sh(t, "rsync", "-a", "--inplace", dir+"/", m.dir+"/")
		if l := check("r1", 100_000); l.UUID != old {
			t.Fatal("rsync --inplace replaced r1")
		}
		for _, n := range e.files() {
			if strings.HasPrefix(n, ".") || strings.HasPrefix(n, "+2E") {
				t.Fatalf("rsync's temporary file left as LV %s", n)
			}
		}
	})

	t.Run("qemu-img", func(t *testing.T) {
		src := filepath.Join(e.base, "src.qcow2")
		sh(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "64M")
		sh(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 3M", "-c", "write -P 0xcd 40M 64k", src)
		// convert into a new file of the mount
		sh(t, "qemu-img", "convert", "-O", "raw", src, m.path("conv.raw"))
		sh(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, m.path("conv.raw"))
		e.wantFileLV("conv.raw", 64*mib)
		// a qcow2 image made in the mount
		img := m.path("made.qcow2")
		sh(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1G")
		sh(t, "qemu-img", "check", img)
		sh(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 100M 1M", "-c", "read -P 0x5a 100M 1M", img)
		sh(t, "qemu-img", "check", img)
		if out := sh(t, "qemu-img", "info", img); !strings.Contains(out, "virtual size: 1 GiB") {
			t.Fatalf("qemu-img info:\n%s", out)
		}
		e.wantFileLV("made.qcow2", size(t, img))
	})

	t.Run("filesystem", func(t *testing.T) {
		img := m.path("fs.img")
		sh(t, "truncate", "-s", "64M", img)
		sh(t, "mkfs.ext4", "-q", "-F", img)
		loop := strings.TrimSpace(sh(t, "losetup", "--find", "--show", "--direct-io=on", img))
		t.Cleanup(func() { _, _ = try("losetup", "-d", loop) })
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
		src := e.file("fs-src", 2*mib+5, 31)
		sh(t, "cp", src, filepath.Join(dir, "data"))
		if err := os.MkdirAll(filepath.Join(dir, "d/e/f"), 0o755); err != nil {
			t.Fatal(err)
		}
		sh(t, "umount", dir)
		fsMounted = false
		sh(t, "fsck.ext4", "-fn", loop)
		sh(t, "losetup", "-d", loop)
		// The file system is on the LV itself.
		dev := filepath.Join("/dev", e.vg, "fs.img")
		sh(t, "fsck.ext4", "-fn", dev)
		sh(t, "mount", "-o", "ro", dev, dir)
		fsMounted = true
		sameData(t, src, filepath.Join(dir, "data"))
		sh(t, "umount", dir)
		fsMounted = false
		e.wantFileLV("fs.img", 64*mib)
	})

	t.Run("mtime", func(t *testing.T) {
		p := m.path("mt")
		sh(t, "cp", e.file("mt-src", 100_000, 41), p)
		oldTag, _ := e.wantFileLV("mt", 100_000).tag("volfs.mtime")
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		start := time.Now()
		if _, err := f.WriteAt([]byte("written"), 12345); err != nil {
			t.Fatal(err)
		}
		// The mtime of writes is kept in memory: no tag change per write...
		if v, _ := e.lv("mt").tag("volfs.mtime"); v != oldTag {
			t.Fatalf("mtime tag changed by a write: %s -> %s", oldTag, v)
		}
		if st, err := f.Stat(); err != nil || st.ModTime().Before(start) {
			t.Fatalf("mtime after a write: %v %v", st.ModTime(), err)
		}
		// ...and persisted by fsync...
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		end := time.Now()
		v, _ := e.lv("mt").tag("volfs.mtime")
		if tm := parseTagTime(t, v); tm.Before(start) || tm.After(end) {
			t.Fatalf("mtime tag after fsync: %s, want between %v and %v", v, start, end)
		}
		// ...and by the last close.
		start = time.Now()
		if _, err := f.WriteAt([]byte("again"), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		end = time.Now()
		e.waitLV("mt", "mtime of the last write persisted", func(l lv) bool {
			v, _ := l.tag("volfs.mtime")
			tm := parseTagTime(t, v)
			return !tm.Before(start) && !tm.After(end)
		})
	})

	t.Run("statfs", func(t *testing.T) {
		// Space is cached for a second, like the listing.
		waitFor(t, "statfs matches vgs", 10*time.Second, func() bool {
			var st syscall.Statfs_t
			if err := syscall.Statfs(m.dir, &st); err != nil {
				t.Fatal(err)
			}
			f := strings.Fields(sh(t, "vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_size,vg_free", e.vg))
			total, _ := strconv.ParseInt(f[0], 10, 64)
			free, _ := strconv.ParseInt(f[1], 10, 64)
			return int64(st.Blocks)*st.Bsize == total && int64(st.Bfree)*st.Bsize == free &&
				int64(st.Bavail)*st.Bsize == free
		})
	})
}

func parseTagTime(t *testing.T, v string) time.Time {
	t.Helper()
	sec, nsec, ok := strings.Cut(v, ".")
	s, err1 := strconv.ParseInt(sec, 10, 64)
	ns, err2 := strconv.ParseInt(nsec, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("time tag %q", v)
	}
	return time.Unix(s, ns)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func fileBytes(t testing.TB, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %d bytes at %d of %s: %v", n, off, path, err)
	}
	return b
}
