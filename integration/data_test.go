package integration

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/internal/testutil"
)

func TestCopyInAndOut(t *testing.T) {
	m, dev := setup(t, 64<<20)
	src := randomFile(t, 10_000_001)
	sh(t, "cp", src, m.path(dev))
	if got, want := sha(t, dev, 10_000_001), sha(t, src, 10_000_001); got != want {
		t.Fatalf("device bytes after cp differ from the source: %s != %s", got, want)
	}
	out := filepath.Join(t.TempDir(), "out")
	sh(t, "cp", m.path(dev), out)
	if got, want := sha(t, out, 1<<62), sha(t, dev, 1<<62); got != want {
		t.Fatal("cp out of the mount differs from the device")
	}
	// dd in at an odd offset and out again, in both directions.
	sh(t, "dd", "if="+src, "of="+m.path(dev), "bs=65536", "seek=3", "count=20", "conv=notrunc", "status=none")
	sh(t, "dd", "if="+m.path(dev), "of="+out, "bs=65536", "skip=3", "count=20", "status=none")
	if !bytes.Equal(fileBytes(t, out, 0, 20*65536), fileBytes(t, src, 0, 20*65536)) {
		t.Fatal("dd round trip differs")
	}
	if !bytes.Equal(fileBytes(t, dev, 3*65536, 20*65536), fileBytes(t, src, 0, 20*65536)) {
		t.Fatal("dd wrote elsewhere than the device offset")
	}
	// dd without conv=notrunc opens with O_TRUNC: a device file keeps its size.
	sh(t, "dd", "if="+src, "of="+m.path(dev), "bs=1M", "count=1", "status=none")
	if st, err := os.Stat(m.path(dev)); err != nil || st.Size() != 64<<20 {
		t.Fatalf("size after dd with O_TRUNC: %v %v", st.Size(), err)
	}
}

func TestUnalignedIO(t *testing.T) {
	m, dev := setup(t, 16<<20)
	f, err := os.OpenFile(m.path(dev), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	model := make([]byte, 16<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 300; i++ {
		off := rng.Int64N(int64(len(model)) - 200000)
		n := 1 + rng.IntN(199999)
		if i%3 == 0 {
			off &^= 4095
			n = (n + 4095) &^ 4095
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatalf("write %d bytes at %d: %v", n, off, err)
		}
		copy(model[off:], b)
		// read back a random window around it
		ro := max(0, off-int64(rng.IntN(5000)))
		rn := min(int64(len(model))-ro, int64(n+rng.IntN(9000)))
		got := make([]byte, rn)
		if _, err := f.ReadAt(got, ro); err != nil {
			t.Fatalf("read %d at %d: %v", rn, ro, err)
		}
		if !bytes.Equal(got, model[ro:ro+rn]) {
			t.Fatalf("after write %d@%d: read %d@%d differs", n, off, rn, ro)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fileBytes(t, dev, 0, int64(len(model))), model) {
		t.Fatal("device bytes differ from what was written through the file")
	}
}

func TestODirect(t *testing.T) {
	m, dev := setup(t, 16<<20)
	f, err := os.OpenFile(m.path(dev), os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := aligned(1 << 20)
	for i := range buf {
		buf[i] = byte(i % 251)
	}
	if _, err := f.WriteAt(buf, 4<<20); err != nil {
		t.Fatal(err)
	}
	back := aligned(1 << 20)
	if _, err := f.ReadAt(back, 4<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, buf) || !bytes.Equal(fileBytes(t, dev, 4<<20, 1<<20), buf) {
		t.Fatal("O_DIRECT round trip differs")
	}
}

func aligned(n int) []byte {
	b := make([]byte, n+4096)
	off := int((4096 - uintptr(unsafe.Pointer(&b[0]))%4096) % 4096)
	return b[off : off+n]
}

func TestPunchHoleAndZeroRange(t *testing.T) {
	m, dev := setup(t, 16<<20)
	src := randomFile(t, 16<<20)
	sh(t, "dd", "if="+src, "of="+m.path(dev), "bs=1M", "conv=notrunc", "status=none")
	f, err := os.OpenFile(m.path(dev), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zero := make([]byte, 1<<20)
	for _, c := range []struct {
		mode     uint32
		off, len int64
	}{
		{unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20},
		{unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE, 5<<20 + 4096, 65536},
		{unix.FALLOC_FL_ZERO_RANGE, 8 << 20, 1 << 20},
	} {
		if err := unix.Fallocate(int(f.Fd()), c.mode, c.off, c.len); err != nil {
			t.Fatalf("fallocate mode %#x: %v", c.mode, err)
		}
		if !bytes.Equal(fileBytes(t, m.path(dev), c.off, c.len), zero[:c.len]) {
			t.Fatalf("fallocate mode %#x: range does not read back as zeros", c.mode)
		}
		if !bytes.Equal(fileBytes(t, m.path(dev), c.off+c.len, 4096), fileBytes(t, src, c.off+c.len, 4096)) {
			t.Fatalf("fallocate mode %#x: zeroed past its range", c.mode)
		}
	}
	// fallocate mode 0 inside the file is a no-op; past the end of a device, no space.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 1<<20); err != nil {
		t.Errorf("fallocate mode 0 inside the file: %v", err)
	}
	sh(t, "fallocate", "-p", "-o", "12M", "-l", "1M", m.path(dev))
	if !bytes.Equal(fileBytes(t, dev, 12<<20, 1<<20), zero) {
		t.Fatal("fallocate -p did not zero the device")
	}
	// A hole that starts and ends inside blocks.
	sh(t, "fallocate", "-p", "-o", "14680164", "-l", "10000", m.path(dev)) // 14 MiB + 100
	if !bytes.Equal(fileBytes(t, dev, 14<<20+100, 10000), zero[:10000]) {
		t.Fatal("an unaligned hole does not read back as zeros")
	}
	for _, off := range []int64{14<<20 + 99, 14<<20 + 10100} {
		if !bytes.Equal(fileBytes(t, dev, off, 1), fileBytes(t, src, off, 1)) {
			t.Fatalf("an unaligned hole zeroed byte %d outside it", off)
		}
	}
	// SEEK_DATA/SEEK_HOLE: all data.
	if off, err := unix.Seek(int(f.Fd()), 4096, unix.SEEK_DATA); err != nil || off != 4096 {
		t.Errorf("SEEK_DATA = %d, %v", off, err)
	}
	if off, err := unix.Seek(int(f.Fd()), 4096, unix.SEEK_HOLE); err != nil || off != 16<<20 {
		t.Errorf("SEEK_HOLE = %d, %v", off, err)
	}
}

func TestFioVerify(t *testing.T) {
	testutil.Need(t, "fio")
	m, dev := setup(t, 64<<20)
	for _, engine := range []string{"libaio", "psync"} {
		out := sh(t, "fio", "--name=verify", "--filename="+m.path(dev), "--rw=randwrite", "--bs=4k,64k",
			"--bsrange=512-128k", "--size=48M", "--ioengine="+engine, "--iodepth=16", "--direct=1",
			"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--do_verify=1", "--randrepeat=0", "--output-format=terse")
		if strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
			t.Fatalf("fio verify (%s):\n%s", engine, out)
		}
	}
	// Buffered, unaligned sizes.
	sh(t, "fio", "--name=verify-buffered", "--filename="+m.path(dev), "--rw=randrw", "--bsrange=1k-33k",
		"--size=16M", "--ioengine=psync", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse")
}

func TestMmap(t *testing.T) {
	m, dev := setup(t, 8<<20)
	f, err := os.OpenFile(m.path(dev), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap of an image file: %v", err)
	}
	copy(mem[12345:], "written through mmap")
	if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
		t.Fatal(err)
	}
	if err := unix.Munmap(mem); err != nil {
		t.Fatal(err)
	}
	if got := fileBytes(t, dev, 12345, 20); string(got) != "written through mmap" {
		t.Fatalf("device after msync: %q", got)
	}
	if _, err := f.WriteAt([]byte("written through write"), 4096*10); err != nil {
		t.Fatal(err)
	}
	mem, err = unix.Mmap(int(f.Fd()), 0, 1<<20, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if string(mem[40960:40960+21]) != "written through write" {
		t.Fatalf("mmap does not see a write: %q", mem[40960:40960+21])
	}
}

// copy_file_range between two files of one mount is served inside the
// server; cp uses it.
func TestCopyFileRangeInMount(t *testing.T) {
	testutil.RequireRoot(t)
	a, b := testutil.NewLoop(t, 32<<20), testutil.NewLoop(t, 32<<20)
	m := newMount(t, []string{a, b})
	src := randomFile(t, 32<<20)
	sh(t, "dd", "if="+src, "of="+m.path(a), "bs=1M", "conv=notrunc", "status=none")
	in, err := os.Open(m.path(a))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(m.path(b), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	offIn, offOut := int64(12345), int64(4096)
	n, err := unix.CopyFileRange(int(in.Fd()), &offIn, int(out.Fd()), &offOut, 5<<20+7, 0)
	if err != nil || n != 5<<20+7 {
		t.Fatalf("copy_file_range = %d, %v", n, err)
	}
	if !bytes.Equal(fileBytes(t, b, 4096, 5<<20+7), fileBytes(t, src, 12345, 5<<20+7)) {
		t.Fatal("copy_file_range copied the wrong bytes")
	}
	sh(t, "cp", m.path(a), m.path(b))
	if sha(t, b, 32<<20) != sha(t, src, 32<<20) {
		t.Fatal("cp between two files of the mount differs")
	}
}
