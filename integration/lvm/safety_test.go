package lvm

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDataSafety: issue 8's data-path items on real LVM.
func TestDataSafety(t *testing.T) {
	e := newVG(t)
	m := e.mount()

	// A zero-range across the end grows the file first, then zeroes: the
	// bytes before the range stay, the range reads as zeros, and the LV
	// records the new size.
	t.Run("zero range grows", func(t *testing.T) {
		src := e.file("z-src", mib+3, 7)
		p := m.path("z")
		sh(t, "cp", src, p)
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE, 512*kib, 2*mib); err != nil {
			t.Fatalf("zero range across the end: %v", err)
		}
		if got := size(t, p); got != 512*kib+2*mib {
			t.Fatalf("size after zero range: %d, want %d", got, 512*kib+2*mib)
		}
		if !bytes.Equal(fileBytes(t, p, 0, 512*kib), fileBytes(t, src, 0, 512*kib)) {
			t.Error("bytes before the zeroed range changed")
		}
		if !allZero(fileBytes(t, p, 512*kib, 2*mib)) {
			t.Error("the zeroed range is not zeros")
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if v, _ := e.lv("z").tag("volfs.size"); v != "2621440" {
			t.Errorf("volfs.size after fsync: %q, want 2621440", v)
		}
	})

	// A time LVM tags could hold but the state file of --device mounts
	// cannot is refused the same way on both: EINVAL, nothing changed,
	// fsync unaffected.
	t.Run("out of range time", func(t *testing.T) {
		p := m.path("z")
		out, err := try("touch", "-d", "10000-01-02", p)
		if err == nil || !strings.Contains(out, "Invalid argument") {
			t.Fatalf("touch -d 10000-01-02: %v %s", err, out)
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte("after"), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("fsync after a refused touch: %v", err)
		}
	})
}
