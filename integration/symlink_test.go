package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
)

// A --device match is a path; a user who owns the directory of the glob can
// re-point a symlink at a device they may not read. The file stays bound to
// the device it was listed as: a file chowned to that user must never reach
// the other device, and the other device is a new file owned by root.
func TestRepointedSymlinkIsAnotherFile(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.Need(t, "setpriv")
	mine, secret := testutil.NewLoop(t, 8<<20), testutil.NewLoop(t, 8<<20)
	if err := os.WriteFile(secret, []byte("root-only secret"), 0); err != nil {
		t.Fatal(err)
	}
	// The node says "readable by all": a file that a name leads to only
	// after it led elsewhere starts as root's 0600 all the same.
	st0 := stat(t, secret)
	t.Cleanup(func() { _ = os.Chmod(secret, os.FileMode(st0.Mode&0o777)) })
	if err := os.Chmod(secret, 0o644); err != nil {
		t.Fatal(err)
	}
	links := filepath.Join(t.TempDir(), "links")
	if err := os.Mkdir(links, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(links, "disk")
	if err := os.Symlink(mine, link); err != nil {
		t.Fatal(err)
	}
	m := newMount(t, []string{filepath.Join(links, "*")})
	p := filepath.Join(m.dir, "disk")
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if out, err := asNobody("printf mine | dd of=" + p + " conv=notrunc status=none && head -c 4 " + p); err != nil || out != "mine" {
		t.Fatalf("the owner cannot use the file: %v %q", err, out)
	}
	ino := stat(t, p).Ino

	// Re-point the link (as the directory's owner could), then try at once,
	// while the kernel still has the old file's attributes, and again until
	// the mount has noticed.
	tmp := link + ".new"
	if err := os.Symlink(secret, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
	try := func() {
		t.Helper()
		out, err := asNobody("head -c 16 " + p)
		if strings.Contains(out, "secret") {
			t.Fatalf("a user read a root-only device through a re-pointed symlink: %q", out)
		}
		if err == nil {
			t.Fatalf("a user opened a re-pointed device file: %q", out)
		}
		out, err = asNobody("printf pwned | dd of=" + p + " conv=notrunc status=none")
		if err == nil {
			t.Fatalf("a user wrote through a re-pointed device file: %q", out)
		}
	}
	try()
	deadline := time.Now().Add(10 * time.Second)
	var st *syscall.Stat_t
	for {
		st = stat(t, p)
		if st.Ino != ino {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the file kept its inode number %d after its link was re-pointed", ino)
		}
		try()
		time.Sleep(20 * time.Millisecond)
	}
	if st.Uid != 0 || st.Mode&0o7777 != 0o600 {
		t.Errorf("the re-pointed file is uid %d mode %o; want a new file, root's, 0600", st.Uid, st.Mode&0o7777)
	}
	try()
	if b := fileBytes(t, secret, 0, 16); string(b) != "root-only secret" {
		t.Fatalf("the root-only device was changed: %q", b)
	}
	log, _ := os.ReadFile(m.log)
	if !strings.Contains(string(log), "now leads to another device") {
		t.Errorf("the log does not say the device changed:\n%s", log)
	}
}
