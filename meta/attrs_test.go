package meta

import (
	"testing"
	"time"
)

// TestCheckTime: the times CheckTime accepts are the ones the state file
// can save (touch -d 10000-01-02 made every later save fail).
func TestCheckTime(t *testing.T) {
	dir := t.TempDir()
	s, err := NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		t  time.Time
		ok bool
	}{
		{time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), true},
		{time.Unix(0, 0), true},
		{time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), true},
		{time.Date(0, 1, 2, 0, 0, 0, 0, time.UTC), true},
		{time.Date(10000, 1, 2, 0, 0, 0, 0, time.UTC), false},
		{time.Date(-1, 1, 2, 0, 0, 0, 0, time.UTC), false},
		{time.Unix(1<<62, 0), false},
	} {
		err := CheckTime(c.t)
		if (err == nil) != c.ok {
			t.Errorf("CheckTime(%v) = %v, want ok %v", c.t, err, c.ok)
		}
		if err == nil {
			if serr := s.Save("x", Attrs{Mtime: c.t, Atime: c.t, Ctime: c.t, Size: -1}); serr != nil {
				t.Errorf("CheckTime accepts %v but the store cannot save it: %v", c.t, serr)
			}
		}
	}
}
