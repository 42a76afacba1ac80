package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"

	"github.com/volfs/volfs/volmap"
)

func TestToErrno(t *testing.T) {
	r := &Root{log: slog.New(slog.DiscardHandler)}
	dev := func(op string, e syscall.Errno) error { return &os.PathError{Op: op, Path: "/dev/x", Err: e} }
	for _, c := range []struct {
		op   string
		err  error
		want syscall.Errno
	}{
		{"op", nil, 0},
		{"op", fmt.Errorf("lvcreate vg0/x: %w", volmap.ErrNoSpace), syscall.ENOSPC},
		{"op", fmt.Errorf("x: %w", volmap.ErrNotFound), syscall.ENOENT},
		{"op", fmt.Errorf("x: %w", volmap.ErrExists), syscall.EEXIST},
		{"op", fmt.Errorf("x: %w", volmap.ErrInUse), syscall.EBUSY},
		{"op", fmt.Errorf("x: %w", volmap.ErrInvalidName), syscall.EINVAL},
		{"op", fmt.Errorf("x: %w", volmap.ErrNameTooLong), syscall.ENAMETOOLONG},
		{"op", fmt.Errorf("x: %w", volmap.ErrNotSupported), syscall.EPERM},
		{"op", fmt.Errorf("x: %w", volmap.ErrReadOnly), syscall.EROFS},
		{"op", dev("write", syscall.ENOSPC), syscall.ENOSPC},
		{"read", dev("read", syscall.ENOSYS), syscall.EIO}, // never ENOSYS
		{opNameZeroRange, dev("fallocate", syscall.ENOSYS), syscall.EIO},
		{"op", errors.New("something odd"), syscall.EIO},
		// fallocate's callers fall back to writing zeros on EOPNOTSUPP;
		// any other operation has no such answer.
		{opNameZeroRange, dev("fallocate", syscall.EOPNOTSUPP), syscall.EOPNOTSUPP},
		{opNamePunchHole, fmt.Errorf("discard: %w", syscall.EOPNOTSUPP), syscall.EOPNOTSUPP},
		{"read", dev("read", syscall.EOPNOTSUPP), syscall.EIO},
		{"resize", fmt.Errorf("x: %w", syscall.EOPNOTSUPP), syscall.EIO},
		// A read-only device refuses writes with EPERM: EROFS for a file.
		{opNameWrite, dev("write", syscall.EPERM), syscall.EROFS},
		{opNameZeroRange, dev("fallocate", syscall.EPERM), syscall.EROFS},
		{"open", dev("open", syscall.EPERM), syscall.EPERM},
	} {
		if got := r.toErrno(c.op, "vol", c.err); got != c.want {
			t.Errorf("toErrno(%q, %v) = %v, want %v", c.op, c.err, got, c.want)
		}
	}
}

func TestGrowTarget(t *testing.T) {
	const mib, gib = int64(1 << 20), int64(1 << 30)
	for _, c := range []struct{ dev, end, want int64 }{
		{0, 1, 64 * mib},                 // the first step is at least 64 MiB
		{64 * mib, 65 * mib, 128 * mib},  // then doubling
		{1 * gib, 3 * gib, 3 * gib},      // never less than needed
		{20 * gib, 20*gib + 1, 28 * gib}, // at most 8 GiB a step
		{100 * mib, 50 * mib, 200 * mib}, // (callers only ask when end > dev)
	} {
		if got := growTarget(c.dev, c.end); got != c.want {
			t.Errorf("growTarget(%d, %d) = %d, want %d", c.dev, c.end, got, c.want)
		}
	}
}

func TestInoStable(t *testing.T) {
	a, b := inoOf("lv-uuid-1"), inoOf("lv-uuid-1")
	if a != b || a <= 1 || inoOf("lv-uuid-2") == a {
		t.Fatalf("inoOf not stable or not distinct: %d %d %d", a, b, inoOf("lv-uuid-2"))
	}
}

func TestBuffersAligned(t *testing.T) {
	for _, n := range []int{1, 512, 4096, 4097, 65536, 1 << 20} {
		b := getBuf(n)
		if len(*b) != n || !isAligned(*b, bufAlign) {
			t.Fatalf("getBuf(%d): len %d aligned %v", n, len(*b), isAligned(*b, bufAlign))
		}
		putBuf(b)
	}
}

func TestCountCPUs(t *testing.T) {
	for _, c := range []struct {
		list string
		want int
		ok   bool
	}{
		{"0-1\n", 2, true},
		{"0", 1, true},
		{"0-3,8", 5, true},
		{"0,2,4-7", 6, true},
		{"", 0, false},
		{"3-1", 0, false},
		{"x", 0, false},
	} {
		n, err := countCPUs(c.list)
		if (err == nil) != c.ok || n != c.want {
			t.Errorf("countCPUs(%q) = %d, %v; want %d (ok %v)", c.list, n, err, c.want, c.ok)
		}
	}
}
