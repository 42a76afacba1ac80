package meta

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFileStore(t *testing.T) {
	s, err := NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if a, found, err := s.Load("dev:1"); err != nil || found || a.Size != -1 {
		t.Fatalf("empty load: %+v %v %v", a, found, err)
	}
	want := sample()
	if err := s.Save("dev:1", want); err != nil {
		t.Fatal(err)
	}
	got, found, err := s.Load("dev:1")
	if err != nil || !found || !got.Equal(want) {
		t.Fatalf("load: %+v %v %v", got, found, err)
	}
	ents, _ := os.ReadDir(s.Dir())
	if len(ents) != 1 {
		t.Fatalf("store left %d files, want 1", len(ents))
	}
}

func TestFileStoreRemovesLeftovers(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, tmpPrefix+tmpOwner+"-123") // this process is saving
	for _, p := range []string{filepath.Join(dir, ".tmp-4711"), filepath.Join(dir, ".tmp-1-1-99"), live} {
		if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewFileStore(dir); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != filepath.Base(live) {
		t.Fatalf("left %v, want only the live process's %s", ents, filepath.Base(live))
	}
}

func TestFileStoreRefusesUnsafeDirs(t *testing.T) {
	base := t.TempDir() // under /tmp: world-writable, sticky, accepted
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	inside := filepath.Join(open, "state")
	for _, c := range []struct{ dir, want string }{
		{open, open + " is writable by group or others (mode 0777)"},
		{inside, "its parent " + open + " is writable by group or others"},
	} {
		if _, err := NewFileStore(c.dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewFileStore(%s) = %v, want %q", c.dir, err, c.want)
		}
	}
	if os.Geteuid() == 0 {
		mine := filepath.Join(base, "nobody")
		if err := os.Mkdir(mine, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(mine, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := NewFileStore(mine); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Errorf("a state directory owned by nobody: %v", err)
		}
	}
	safe := filepath.Join(base, "safe")
	s, err := NewFileStore(safe)
	if err != nil {
		t.Fatalf("a new state directory under %s: %v", base, err)
	}
	if st, _ := os.Stat(s.Dir()); st.Mode().Perm() != 0o700 {
		t.Errorf("created %s with mode %o, want 0700", safe, st.Mode().Perm())
	}
}

// FuzzStore decodes arbitrary state files: Load never panics, what it
// accepts is valid Attrs (the checks DecodeTags makes of tags) that Save
// stores and Load gives back unchanged, and attributes saved come back
// equal.
func FuzzStore(f *testing.F) {
	b, err := json.Marshal(record{ID: "dev:1", Attrs: sample()})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, uint32(0o644), int64(5), "user.a", []byte("v"), int64(1700000000))
	f.Add([]byte(`{"id":"dev:1","attrs":{"Mode":4294967295,"Size":-7}}`), uint32(0), int64(-1), "", []byte{}, int64(0))
	f.Add([]byte(`{"id":"dev:2"}`), uint32(0o7777), int64(1<<62), "trusted.x", []byte{0}, int64(-5))
	// Save fsyncs: on tmpfs the fuzzer runs thousands a second, not tens.
	dir, err := os.MkdirTemp("/dev/shm", "volfs-fuzz-")
	if err != nil {
		dir = f.TempDir()
	} else {
		f.Cleanup(func() { os.RemoveAll(dir) })
	}
	s, err := NewFileStore(dir)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, file []byte, mode uint32, size int64, xn string, xv []byte, sec int64) {
		if err := os.WriteFile(s.path("dev:1"), file, 0o600); err != nil {
			t.Fatal(err)
		}
		if a, found, err := s.Load("dev:1"); err == nil && found {
			if a.Mode&^07777 != 0 || a.Size < -1 {
				t.Fatalf("Load accepted %+v from %q", a, file)
			}
			if err := s.Save("dev:1", a); err != nil {
				t.Fatal(err)
			}
			if b, _, err := s.Load("dev:1"); err != nil || !b.Equal(a) {
				t.Fatalf("round trip of %q: %+v != %+v (%v)", file, b, a, err)
			}
		} else if err == nil {
			t.Fatalf("Load of an existing file found nothing")
		}
		a := Attrs{ID: fmt.Sprintf("%x", xn), Mode: mode & 07777, Size: max(size, -1), Mtime: time.Unix(sec%(1<<35), sec%1e9).UTC()}
		if xn != "" {
			a.Xattrs = map[string][]byte{xn: xv}
		}
		if err := s.Save(xn, a); err != nil {
			t.Fatal(err)
		}
		if b, found, err := s.Load(xn); err != nil || !found || !b.Equal(a) {
			t.Fatalf("round trip: %+v != %+v (%v %v)", b, a, found, err)
		}
	})
}
