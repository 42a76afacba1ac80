package meta

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"unicode/utf8"
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
	// A JSON string holds only UTF-8 (encoding/json replaces other bytes),
	// and an identity or an xattr name may be any bytes: RawID is the
	// identity when it is not UTF-8, RawXattrs the xattrs whose names are
	// not, keyed by their base64.
	RawID     []byte            `json:"raw_id,omitempty"`
	RawXattrs map[string][]byte `json:"raw_xattrs,omitempty"`
}

// newRecord is the record of id's attributes a.
func newRecord(id string, a Attrs) record {
	r := record{ID: id, Attrs: a}
	if !utf8.ValidString(id) {
		r.RawID = []byte(id)
	}
	for k, v := range a.Xattrs {
		if utf8.ValidString(k) {
			continue
		}
		if r.RawXattrs == nil {
			r.Attrs.Xattrs = maps.Clone(a.Xattrs)
			r.RawXattrs = map[string][]byte{}
		}
		delete(r.Attrs.Xattrs, k)
		r.RawXattrs[base64.StdEncoding.EncodeToString([]byte(k))] = v
	}
	return r
}

// decode returns the identity and attributes of a record that newRecord
// made.
func (r record) decode() (string, Attrs, error) {
	id, a := r.ID, r.Attrs
	if r.RawID != nil {
		id = string(r.RawID)
	}
	if len(r.RawXattrs) > 0 {
		a.Xattrs = maps.Clone(a.Xattrs)
		if a.Xattrs == nil {
			a.Xattrs = map[string][]byte{}
		}
		for k, v := range r.RawXattrs {
			name, err := base64.StdEncoding.DecodeString(k)
			if err != nil {
				return id, a, fmt.Errorf("bad xattr name %q: %w", k, err)
			}
			a.Xattrs[string(name)] = v
		}
	}
	return id, a, nil
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
	rid, ra, err := r.decode()
	if err != nil {
		return a, false, fmt.Errorf("%s: %w", s.path(id), err)
	}
	if rid != id {
		return a, false, fmt.Errorf("%s belongs to %q, not %q", s.path(id), rid, id)
	}
	// What DecodeTags refuses in tags is refused here too: mode bits
	// beyond 07777 would reach the kernel as a file type.
	if ra.Mode&^07777 != 0 || ra.Size < -1 {
		return a, false, fmt.Errorf("%s: bad attributes (mode %#o, size %d); remove the file to forget them",
			s.path(id), ra.Mode, ra.Size)
	}
	return ra, true, nil
}

// Save stores a for id atomically.
func (s *FileStore) Save(id string, a Attrs) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := json.Marshal(newRecord(id, a))
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
