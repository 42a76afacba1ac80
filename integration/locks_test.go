package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
)

// Two servers never serve one device: a second mount of it (by any name)
// is refused naming the mount that has it; a device that a rescan finds
// while another server has it is skipped with a warning.
func TestOneServerPerDevice(t *testing.T) {
	testutil.RequireRoot(t)
	a, b := testutil.NewLoop(t, 8<<20), testutil.NewLoop(t, 8<<20)
	m := newMount(t, []string{a})
	pid := serverPid(t, m)

	base, err := os.MkdirTemp(tmpRoot, "second-")
	if err != nil {
		t.Fatal(err)
	}
	links, mnt := filepath.Join(base, "links"), filepath.Join(base, "mnt")
	for _, d := range []string{links, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(a, filepath.Join(links, "same")); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(base, "log")
	mountArgs := func(glob string) []string {
		return []string{"mount", "--device", glob, "--state-dir", filepath.Join(base, "state"), "--log-file", log, mnt}
	}
	for _, glob := range []string{a, filepath.Join(links, "*")} {
		out, code := volfsRun(t, mountArgs(glob)...)
		if ok, _ := isMounted(mnt); ok {
			_, _ = volfsRun(t, "umount", mnt)
		}
		want := "is served by the volfs mount at " + m.dir + " (pid " + strconv.Itoa(pid) + ")"
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("second server of %s via %s: exit %d %q; want %q", a, glob, code, out, want)
		}
	}

	// A glob that matches b now and a later.
	if err := os.Remove(filepath.Join(links, "same")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(b, filepath.Join(links, "mine")); err != nil {
		t.Fatal(err)
	}
	if out, code := volfsRun(t, mountArgs(filepath.Join(links, "*"))...); code != 0 {
		t.Fatalf("mount of another device: exit %d %q", code, out)
	}
	defer func() {
		if out, code := volfsRun(t, "umount", mnt); code != 0 {
			t.Errorf("umount %s: %q", mnt, out)
		}
	}()
	if err := os.Symlink(a, filepath.Join(links, "theirs")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _ = os.ReadDir(mnt) // rescans
		if b, _ := os.ReadFile(log); strings.Contains(string(b), "skipping a device another server serves") {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(log)
			t.Fatalf("no warning about a device another server serves:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	names, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0].Name() != "mine" {
		t.Errorf("files %v, want only mine", names)
	}
	// Once the first server is gone, the device can be served here.
	m.umount()
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(mnt, "theirs")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the device did not show up after its server left")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
