package fs

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"
)

// volfs status, ls and the metrics count the open files without waiting
// for a file's lock, which an lvm command or a device flush may hold for
// seconds (forever on a hung disk): here a creation of the file's volume,
// held as a slow lvcreate would be. Before, a scrape waited for it (the
// load test's scrapes timed out after a minute), and so did ls.
func TestInspectorNotHeldByBusyFile(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	var once, released sync.Once
	m := newTestMount(t, mountConfig{BeforeCreate: func(string) {
		once.Do(func() { close(started); <-release })
	}})
	t.Cleanup(func() { released.Do(func() { close(release) }) })
	f, err := os.Create(m.path("p"))
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- f.Close() }() // FLUSH makes the volume
	<-started

	insp := NewInspector(m.root, ServerInfo{Mount: m.dir})
	type counts struct{ files, handles int }
	got := make(chan counts, 3)
	go func() {
		files, handles := insp.OpenFiles()
		got <- counts{files, handles}
	}()
	go func() {
		st := insp.Status(context.Background())
		got <- counts{st.OpenFiles, st.OpenHandles}
	}()
	go func() {
		l, err := insp.Listing(context.Background())
		if err != nil || len(l.Files) != 1 || !l.Files[0].Busy || !l.Files[0].Pending || l.Files[0].Name != "p" {
			t.Errorf("ls while the volume is made: %+v, %v; want p, pending and busy", l, err)
			got <- counts{}
			return
		}
		got <- counts{1, l.Files[0].Handles}
	}()
	for _, what := range []string{"OpenFiles", "Status", "Listing"} {
		select {
		case c := <-got:
			if c != (counts{1, 1}) {
				t.Errorf("open files and handles while the volume is made: %+v, want 1 and 1", c)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("the inspector (%s or another) waited for the file's creation", what)
		}
	}
	released.Do(func() { close(release) })
	if err := <-closed; err != nil {
		t.Fatalf("close: %v", err)
	}
}
