package meta

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// FileStore keeps Attrs in one small JSON file per volume identity under a
// directory, each written atomically (temporary file, fsync, rename, fsync
// of the directory), so a crash leaves the old or the new version.
type FileStore struct {
	dir string
	mu  sync.Mutex
}

// NewFileStore returns a store rooted at dir, creating it (0700) if needed.
// The directory and its parents must be safe (see checkSafe): whoever can
// write there can give themselves any device. Temporary files that a
// server killed in the middle of a Save left behind are removed.
func NewFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	if err := checkSafe(dir); err != nil {
		return nil, err
	}
	s := &FileStore{dir: dir}
	s.removeLeftovers()
	return s, nil
}

// Dir is the directory the store writes to.
func (s *FileStore) Dir() string { return s.dir }

type record struct {
	ID    string `json:"id"`
	Attrs Attrs  `json:"attrs"`
}

func (s *FileStore) path(id string) string {
	h := sha256.Sum256([]byte(id))
	return filepath.Join(s.dir, hex.EncodeToString(h[:16])+".json")
}

// Load returns the attributes stored for id; found is false if none are.
func (s *FileStore) Load(id string) (a Attrs, found bool, err error) {
	b, err := os.ReadFile(s.path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return Attrs{Size: -1}, false, nil
	}
	if err != nil {
		return a, false, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return a, false, fmt.Errorf("%s: %w", s.path(id), err)
	}
	if r.ID != id {
		return a, false, fmt.Errorf("%s belongs to %q, not %q", s.path(id), r.ID, id)
	}
	// What DecodeTags refuses in tags is refused here too: mode bits
	// beyond 07777 would reach the kernel as a file type.
	if r.Attrs.Mode&^07777 != 0 || r.Attrs.Size < -1 {
		return a, false, fmt.Errorf("%s: bad attributes (mode %#o, size %d); remove the file to forget them",
			s.path(id), r.Attrs.Mode, r.Attrs.Size)
	}
	return r.Attrs, true, nil
}

// Save stores a for id atomically.
func (s *FileStore) Save(id string, a Attrs) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := json.Marshal(record{ID: id, Attrs: a})
	if err != nil {
		return err
	}
	final := s.path(id)
	tmp, err := os.CreateTemp(s.dir, tmpPrefix+tmpOwner+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return err
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
