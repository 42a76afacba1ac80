package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/testutil"
)

// --uid, --gid and --file-mode give devices volfs has no attributes for a
// mount-wide owner and mode, shown but not written until the file changes;
// recorded attributes win.
func TestDefaultOwnerAndMode(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.Need(t, "setpriv")
	fresh, recorded := testutil.NewLoop(t, 16<<20), testutil.NewLoop(t, 16<<20)
	m := newMount(t, []string{fresh, recorded})
	if err := os.Chown(m.path(recorded), 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(m.path(recorded), 0o600); err != nil {
		t.Fatal(err)
	}
	m.umount()
	flags := []string{"--uid", "nobody", "--gid", "4242", "--file-mode", "0640"}
	m.args = append(m.args, flags...)
	m.start()
	if st := stat(t, m.path(fresh)); st.Uid != 65534 || st.Gid != 4242 || st.Mode&07777 != 0o640 {
		t.Errorf("a device without attributes: %d:%d mode %o, want 65534:4242 mode 640", st.Uid, st.Gid, st.Mode&07777)
	}
	if st := stat(t, m.path(recorded)); st.Uid != 0 || st.Gid != 0 || st.Mode&07777 != 0o600 {
		t.Errorf("a device with attributes: %d:%d mode %o, want its own 0:0 mode 600", st.Uid, st.Gid, st.Mode&07777)
	}
	if files := stateFiles(t, m); len(files) != 1 {
		t.Errorf("defaults were written before any change: state files %v", files)
	}
	// The default owner uses the file; others cannot.
	if out, err := asNobody("printf mine | dd of=" + m.path(fresh) + " conv=notrunc status=none && head -c 4 " + m.path(fresh)); err != nil || out != "mine" {
		t.Errorf("the default owner cannot use its image: %v %q", err, out)
	}
	if out, err := asNobody("head -c 1 " + m.path(recorded)); err == nil {
		t.Errorf("nobody read a root 0600 image: %q", out)
	}
	// A change records what the file showed.
	if err := os.Chmod(m.path(fresh), 0o600); err != nil {
		t.Fatal(err)
	}
	m.umount()
	m.args = m.args[:len(m.args)-len(flags)]
	m.start()
	if st := stat(t, m.path(fresh)); st.Uid != 65534 || st.Gid != 4242 || st.Mode&07777 != 0o600 {
		t.Errorf("after chmod and a remount without the flags: %d:%d mode %o, want 65534:4242 mode 600", st.Uid, st.Gid, st.Mode&07777)
	}
}

func stateFiles(t testing.TB, m *mount) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(m.state, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".json") {
			files = append(files, p)
		}
		return err
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return files
}

func TestDefaultOwnerFlagErrors(t *testing.T) {
	for _, c := range []struct{ flag, value, want string }{
		{"--uid", "no-such-user-volfs", "no such user"},
		{"--gid", "no-such-group-volfs", "no such group"},
		{"--file-mode", "0999", "octal"},
		{"--file-mode", "17777", "octal"},
	} {
		out, err := exec.Command(volfsBin, "mount", "--device", "/dev/null", c.flag, c.value, t.TempDir()).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("mount %s %s: %v %q, want exit 2 saying %q", c.flag, c.value, err, out, c.want)
		}
	}
}
