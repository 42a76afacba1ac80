package testutil

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// MountState describes everything a client can see of a flat mount: each
// entry's name, type and mode, owner, size, extended attributes (user.*
// and trusted.*, with values) and a hash of its content. Two states are
// equal when nothing visible changed (times aside: a refused operation may
// still count as an access). It never follows symlinks or descends into
// directories (a volfs mount is flat; .snapshots is listed, not walked).
func MountState(t testing.TB, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("listing %s: %v", dir, err)
	}
	var b strings.Builder
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatalf("lstat %q: %v", p, err)
		}
		fmt.Fprintf(&b, "%q mode=%o owner=%d:%d size=%d", e.Name(), st.Mode, st.Uid, st.Gid, st.Size)
		buf := make([]byte, 64<<10)
		n, err := unix.Llistxattr(p, buf)
		if err != nil && err != unix.ENOTSUP {
			t.Fatalf("listxattr %q: %v", p, err)
		}
		names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
		sort.Strings(names)
		for _, x := range names {
			if x == "" {
				continue
			}
			v := make([]byte, 64<<10)
			m, err := unix.Lgetxattr(p, x, v)
			if err != nil {
				t.Fatalf("getxattr %q %s: %v", p, x, err)
			}
			fmt.Fprintf(&b, " %s=%d:%x", x, m, sha256.Sum256(v[:m]))
		}
		if st.Mode&syscall.S_IFMT == syscall.S_IFREG {
			f, err := os.Open(p)
			if err != nil {
				t.Fatalf("open %q: %v", p, err)
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				t.Fatalf("read %q: %v", p, err)
			}
			fmt.Fprintf(&b, " sha256=%x", h.Sum(nil))
		}
		b.WriteByte('\n')
	}
	return b.String()
}
