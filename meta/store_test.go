package meta

import (
	"os"
	"testing"
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
