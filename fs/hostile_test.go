package fs

import (
	"errors"
	"math"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/volfs/volfs/internal/testutil"
	"github.com/volfs/volfs/volmap/loopdir"
	"golang.org/x/sys/unix"
)

// hostileCase is one operation that must fail with want and change
// nothing a client can see.
type hostileCase struct {
	what string
	want syscall.Errno
	op   func() error
}

// refuseAll runs every case, checking its errno and that the mount's state
// (testutil.MountState) is the same after it.
func refuseAll(t *testing.T, dir string, cases []hostileCase) {
	t.Helper()
	for _, c := range cases {
		before := testutil.MountState(t, dir)
		err := c.op()
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v (%s)", c.what, err, c.want, unix.ErrnoName(c.want))
		}
		if after := testutil.MountState(t, dir); after != before {
			t.Errorf("%s changed the mount:\nbefore:\n%s\nafter:\n%s", c.what, before, after)
		}
	}
}

// Every class of bad name, at every operation that names a file, is
// refused with the errno a file system gives and changes nothing; the odd
// names a file system allows work and come back as given. The driver
// here would take names of up to 1000 bytes: the limit of 255 that statfs
// announces is volfs's own.
func TestHostileNames(t *testing.T) {
	m := newTestMount(t, mountConfig{Config: loopdir.Config{MaxName: 1000}})
	m.writeFile("keep", pattern(1<<20, 3))
	m.writeFile("other", pattern(4096, 4))
	keep := m.path("keep")
	type class struct {
		name         string
		create, move syscall.Errno
	}
	classes := []class{
		{strings.Repeat("n", 256), syscall.ENAMETOOLONG, syscall.ENAMETOOLONG},
		{strings.Repeat("ü", 128), syscall.ENAMETOOLONG, syscall.ENAMETOOLONG}, // 256 bytes
		{strings.Repeat("n", 1025), syscall.ENAMETOOLONG, syscall.ENAMETOOLONG},
		{SnapshotDir, syscall.EEXIST, syscall.EPERM},
		{clonePrefix + "0123456789abcdef", syscall.EPERM, syscall.EPERM},
		{".", syscall.EEXIST, syscall.EEXIST}, // the kernel's answers
		{"..", syscall.EEXIST, syscall.EEXIST},
		{"no-such-dir/x", syscall.ENOENT, syscall.ENOENT},
		{"keep/x", syscall.ENOTDIR, syscall.ENOTDIR},
	}
	var cases []hostileCase
	for _, c := range classes {
		p := m.dir + "/" + c.name // not filepath.Join, which cleans "." away
		short := c.name
		if len(short) > 20 {
			short = short[:20] + "..."
		}
		cases = append(cases,
			hostileCase{"create " + short, c.create, func() error {
				f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
				if err == nil {
					f.Close()
				}
				return err
			}},
			hostileCase{"rename keep to " + short, c.move, func() error { return os.Rename(keep, p) }},
		)
	}
	// Nothing but image files: no directories, links, devices, fifos.
	cases = append(cases, []hostileCase{
		{"mkdir", syscall.EPERM, func() error { return os.Mkdir(m.path("d"), 0o755) }},
		{"symlink", syscall.EPERM, func() error { return os.Symlink("keep", m.path("s")) }},
		{"link", syscall.EPERM, func() error { return os.Link(keep, m.path("l")) }},
		{"mkfifo", syscall.EPERM, func() error { return unix.Mkfifo(m.path("f"), 0o644) }},
		{"mknod", syscall.EPERM, func() error { return unix.Mknod(m.path("b"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0))) }},
		{"rename keep over the mount", syscall.EEXIST, func() error { return os.Rename(keep, m.dir) }},
		{"exchange", syscall.EINVAL, func() error {
			return unix.Renameat2(unix.AT_FDCWD, keep, unix.AT_FDCWD, m.path("other"), unix.RENAME_EXCHANGE)
		}},
	}...)
	refuseAll(t, m.dir, cases)

	// Names a file system allows, LVM's reserved ones and hidden-name
	// look-alikes included, are ordinary files.
	odd := []string{strings.Repeat("n", 255), strings.Repeat("ü", 127) + "x", "日本語 \t\n\xff", "+2Fvolfs-snap-x", "+2E", "-x",
		"snapshot", "pvmove1", "a_tmeta", "...", ".snapshotsx", ".volfs-clone", "%2F"}
	for i, n := range odd {
		m.writeFile(n, pattern(4096, byte(i)))
	}
	want := append(slices.Clone(odd), "keep", "other")
	slices.Sort(want)
	if got := names(t, m.dir); !slices.Equal(got, want) {
		t.Fatalf("listing %q, want %q", got, want)
	}
	for i, n := range odd {
		m.checkFile(n, pattern(4096, byte(i)))
	}
}

// Sizes and offsets at and past the limits, and extended attributes over
// theirs, are refused and change nothing.
func TestHostileSizes(t *testing.T) {
	m := newTestMount(t, mountConfig{Config: loopdir.Config{Capacity: 64 << 20}})
	m.writeFile("f", pattern(1<<20, 5))
	p := m.path("f")
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, x := range []string{"user.a", "trusted.b"} {
		if err := unix.Setxattr(p, x, []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
	}
	fd := int(f.Fd())
	big := make([]byte, 4097)
	refuseAll(t, m.dir, []hostileCase{
		{"truncate to 2^62", syscall.ENOSPC, func() error { return f.Truncate(1 << 62) }},
		{"truncate to 2^63-1", syscall.ENOSPC, func() error { return f.Truncate(math.MaxInt64) }},
		{"truncate past the pool", syscall.ENOSPC, func() error { return os.Truncate(p, 65<<20) }},
		{"truncate to -1", syscall.EINVAL, func() error { return f.Truncate(-1) }},
		{"pwrite at 2^63-2", syscall.EINVAL, func() error { _, err := unix.Pwrite(fd, []byte("xyz"), math.MaxInt64-1); return err }},
		{"pwrite at 2^62", syscall.ENOSPC, func() error { _, err := unix.Pwrite(fd, []byte("x"), 1<<62); return err }},
		{"pwrite past the pool", syscall.ENOSPC, func() error { _, err := unix.Pwrite(fd, []byte("x"), 65<<20); return err }},
		{"pwrite at -1", syscall.EINVAL, func() error { _, err := unix.Pwrite(fd, []byte("x"), -1); return err }},
		{"fallocate at 2^62", syscall.ENOSPC, func() error { return unix.Fallocate(fd, 0, 1<<62, 4096) }},
		{"fallocate to 2^63", syscall.EFBIG, func() error { return unix.Fallocate(fd, 0, math.MaxInt64-100, 4096) }},
		{"fallocate past the pool", syscall.ENOSPC, func() error { return unix.Fallocate(fd, 0, 0, 65<<20) }},
		{"xattr name of 256 bytes", syscall.ERANGE, func() error { return unix.Setxattr(p, "user."+strings.Repeat("x", 251), []byte("v"), 0) }},
		{"xattr value over XATTR_SIZE_MAX", syscall.E2BIG, func() error { return unix.Setxattr(p, "user.a", make([]byte, 65537), 0) }},
		{"xattr value over 4096", syscall.E2BIG, func() error { return unix.Setxattr(p, "user.a", big, 0) }},
		{"xattr in security.*", syscall.ENOTSUP, func() error { return unix.Setxattr(p, "security.x", []byte("v"), 0) }},
		{"xattr in system.*", syscall.ENOTSUP, func() error { return unix.Setxattr(p, "system.x", []byte("v"), 0) }},
		{"xattr in an unknown namespace", syscall.ENOTSUP, func() error { return unix.Setxattr(p, "foo.bar", []byte("v"), 0) }},
		{"xattr user. alone", syscall.EINVAL, func() error { return unix.Setxattr(p, "user.", []byte("v"), 0) }},
		{"xattr create over one", syscall.EEXIST, func() error { return unix.Setxattr(p, "user.a", []byte("w"), unix.XATTR_CREATE) }},
		{"xattr replace of none", syscall.ENODATA, func() error { return unix.Setxattr(p, "user.z", []byte("w"), unix.XATTR_REPLACE) }},
		{"remove a missing xattr", syscall.ENODATA, func() error { return unix.Removexattr(p, "user.z") }},
		{"remove a security.* xattr", syscall.ENOTSUP, func() error { return unix.Removexattr(p, "security.x") }},
		{"xattrs over 16 KiB in all", syscall.ENOSPC, func() error {
			for i := range 4 {
				if err := unix.Setxattr(p, "user.big"+string(rune('0'+i)), big[:4096], 0); err != nil {
					for j := range i {
						_ = unix.Removexattr(p, "user.big"+string(rune('0'+j)))
					}
					return err
				}
			}
			return nil
		}},
	})
}
