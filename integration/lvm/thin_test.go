package lvm

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func blocksOf(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestThin(t *testing.T) {
	e := newVG(t)
	e.thinPool("pool", "1g")
	m := e.mount("--thin-pool", "pool")

	// Oversubscribed: a 100 GiB file on a 1 GiB pool.
	p := m.path("big")
	sh(t, "truncate", "-s", "100G", p)
	l := e.waitLV("big", "thin LV of 100 GiB", func(l lv) bool { return l.Size == 100<<30 })
	if l.SegType != "thin" || l.Pool != "pool" || l.DataPercent > 0.01 {
		t.Fatalf("LV big: %+v", l)
	}
	if size(t, p) != 100<<30 {
		t.Fatalf("size %d", size(t, p))
	}
	if b := blocksOf(t, p); b > 16*mib {
		t.Fatalf("st_blocks of an empty 100 GiB thin file: %d bytes", b)
	}
	// Data far out, read back; the rest reads as zeros.
	src := e.file("src", 3*mib, 1)
	sh(t, "dd", "if="+src, "of="+p, "bs=1M", "seek=51200", "conv=notrunc", "status=none")
	if string(fileBytes(t, p, 50<<30, 3*mib)) != string(fileBytes(t, src, 0, 3*mib)) {
		t.Fatal("data at 50 GiB differs")
	}
	if !allZero(fileBytes(t, p, 50<<30-mib, mib)) {
		t.Fatal("unwritten range is not zeros")
	}
	if size(t, p) != 100<<30 {
		t.Fatalf("size after dd conv=notrunc: %d", size(t, p))
	}

	// statfs reports the pool.
	var st syscall.Statfs_t
	if err := syscall.Statfs(m.dir, &st); err != nil || int64(st.Blocks)*st.Bsize != 1<<30 ||
		int64(st.Bfree)*st.Bsize > 1<<30 || int64(st.Bfree)*st.Bsize < 900*mib {
		t.Fatalf("statfs on a thin pool: blocks %d free %d (bsize %d), %v", st.Blocks, st.Bfree, st.Bsize, err)
	}

	// st_blocks is what the pool really holds for the file.
	sh(t, "cp", e.file("src8", 8*mib, 2), m.path("eight"))
	l = e.wantFileLV("eight", 8*mib)
	if l.SegType != "thin" || l.DataPercent != 100 {
		t.Fatalf("LV eight: %+v", l)
	}
	waitFor(t, "st_blocks of a full 8 MiB thin file", externalDelay, func() bool { return blocksOf(t, m.path("eight")) == 8*mib })
	sh(t, "truncate", "-s", "1M", m.path("eight"))
	l = e.wantFileLV("eight", mib)
	// Shrinking gave the cut chunks back to the pool.
	lvs, warnings := e.lvs()
	if l = lvs["eight"]; l.DataPercent > 25 {
		t.Fatalf("thin LV of a 1 MiB file still maps %.2f%% of 4 MiB", l.DataPercent)
	}
	if strings.Contains(warnings, "maps") {
		t.Fatalf("lvs: %s", warnings)
	}
	waitFor(t, "st_blocks after shrinking", externalDelay, func() bool {
		b := blocksOf(t, m.path("eight"))
		return b > 0 && b <= mib
	})
	// And growing again shows zeros, not the old chunks.
	sh(t, "truncate", "-s", "8M", m.path("eight"))
	if !allZero(fileBytes(t, m.path("eight"), mib, 7*mib)) {
		t.Fatal("regrown thin file shows old data")
	}
	if out := sh(t, "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "data_percent", e.vg+"/pool"); func() bool {
		v, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
		return err != nil || v > 5
	}() {
		t.Fatalf("pool data%%: %s", out)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}
