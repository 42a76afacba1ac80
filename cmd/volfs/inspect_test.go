package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	volfs "github.com/volfs/volfs/fs"
	"github.com/volfs/volfs/volmap"
)

// checkGolden compares out with testdata/name (VOLFS_UPDATE_GOLDEN=1
// rewrites it).
func checkGolden(t *testing.T, name string, out []byte) {
	t.Helper()
	golden := filepath.Join("testdata", name)
	if os.Getenv("VOLFS_UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(golden, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, want) {
		t.Errorf("output differs from %s (VOLFS_UPDATE_GOLDEN=1 updates it):\n%s", golden, out)
	}
}

var hundred, syncing = 100.0, 42.4

func sampleListing() *volfs.Listing {
	l := &volfs.Listing{Mount: "/var/lib/images", Source: "vg0", HoldersComplete: true}
	l.Files = []volfs.FileInfo{
		{Name: "db", Size: 10 << 30, Used: 10 << 30, Details: volmap.Details{Kind: "linear", Path: "/dev/vg0/db", Layout: "linear", Health: "ok"}, Holders: []volfs.Holder{}},
		{Name: "mail", Size: 1 << 30, Used: 1 << 30, Details: volmap.Details{Kind: "raid1", Path: "/dev/vg0/mail", Layout: "raid1 mirrors=1",
			Health: "degraded (refresh needed)", Degraded: true, SyncPercent: &hundred}, Holders: []volfs.Holder{}},
		{Name: "new.qcow2", Size: 0, Pending: true, Handles: 1, Details: volmap.Details{Layout: "striped stripes=2"}, Holders: []volfs.Holder{{PID: 4321, Command: "qemu-img"}}},
		{Name: "scratch", Size: 2 << 30, Used: 2 << 30, Details: volmap.Details{Kind: "raid10", Path: "/dev/vg0/scratch", Layout: "raid10 stripes=2 mirrors=1",
			Health: "ok", SyncPercent: &syncing}, Holders: []volfs.Holder{}},
		{Name: "web", Size: 20 << 30, Used: 3382286336, Details: volmap.Details{Kind: "thin", Path: "/dev/vg0/web", Pool: "pool"},
			Handles: 2, Busy: true, Holders: []volfs.Holder{{PID: 1234, Command: "qemu-system-x86"}, {PID: 1300, Command: "rsync"}}},
	}
	l.Total.Files, l.Total.Size, l.Total.Used = 5, 33<<30, 13<<30+3382286336
	l.Pools = []volmap.Pool{
		{Name: "vg0", Kind: "vg", Size: 100 << 30, Free: 70 << 30, DataPercent: -1, MetadataPercent: -1},
		{Name: "vg0/pool", Kind: "thin-pool", Size: 50 << 30, Free: 46 << 30, DataPercent: 8.1, MetadataPercent: 2},
	}
	return l
}

func TestLsOutput(t *testing.T) {
	var b bytes.Buffer
	printListing(&b, sampleListing())
	checkGolden(t, "ls.golden", b.Bytes())
}

func sampleStatus() *volfs.Status {
	return &volfs.Status{Mount: "/var/lib/images", Source: "vg0/pool", Version: "v1.0.0", PID: 4242,
		Started: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC), Uptime: 93784, Transport: "io_uring",
		OpenFiles: 2, OpenHandles: 3, Requests: 1234567, Errors: 3, ReadBytes: 5 << 30, WrittenBytes: 1536 << 20,
		Ops: map[string]volfs.OpCounts{
			"read":   {Requests: 1000000, Seconds: 123.4},
			"write":  {Requests: 200000, Errors: 2, Seconds: 45.6},
			"fsync":  {Requests: 34567, Errors: 1, Seconds: 69.1},
			"lookup": {Requests: 200, Seconds: 0.002},
		},
		Pools: []volmap.Pool{
			{Name: "vg0", Kind: "vg", Size: 100 << 30, Free: 20 << 30, DataPercent: -1, MetadataPercent: -1},
			{Name: "vg0/pool", Kind: "thin-pool", Size: 50 << 30, Free: 7 << 30, DataPercent: 85.96, MetadataPercent: 12.5},
		}}
}

func TestStatusOutput(t *testing.T) {
	st := sampleStatus()
	r := statusReport{Status: st, WarnFill: 80, Warnings: fillWarnings(st, 80)}
	if len(r.Warnings) != 1 {
		t.Errorf("warnings at 80%% = %q, want the data warning only", r.Warnings)
	}
	if w := fillWarnings(st, 90); len(w) != 0 {
		t.Errorf("warnings at 90%% = %q, want none", w)
	}
	var b bytes.Buffer
	printStatus(&b, &r)
	checkGolden(t, "status.golden", b.Bytes())
}

// A thin pool out of metadata space says so, and how to bring it back,
// whatever the warning threshold; one that needs a repair says that.
func TestMetadataFullWarnings(t *testing.T) {
	st := sampleStatus()
	st.Pools[1].MetadataPercent, st.Pools[1].Health = 100, "metadata_read_only"
	w := fillWarnings(st, 101)
	if len(w) != 1 || !strings.Contains(w[0], "thin pool vg0/pool metadata is full") ||
		!strings.Contains(w[0], "lvextend --poolmetadatasize +SIZE vg0/pool") {
		t.Errorf("warnings of a pool out of metadata = %q", w)
	}
	st.Pools[1].NeedsCheck = true
	w = fillWarnings(st, 101)
	if len(w) != 1 || !strings.Contains(w[0], "needs a repair") || !strings.Contains(w[0], "lvconvert --repair vg0/pool") {
		t.Errorf("warnings of a pool that needs a check = %q", w)
	}
	st.Pools[1].Health = "failed"
	w = fillWarnings(st, 101)
	if len(w) != 2 || !strings.Contains(w[1], "thin pool vg0/pool has failed") {
		t.Errorf("warnings of a failed pool = %q", w)
	}
}

func TestDegradedWarnings(t *testing.T) {
	st := sampleStatus()
	if w := degradedWarnings(st); len(w) != 0 {
		t.Errorf("warnings without degraded images: %q", w)
	}
	st.Degraded = []volfs.DegradedImage{{Name: "mail", Layout: "raid1 mirrors=1", Health: "degraded (refresh needed)"}}
	w := degradedWarnings(st)
	if len(w) != 1 || w[0] != "image mail (raid1 mirrors=1) is degraded (refresh needed): replace the failed device "+
		"(lvconvert --repair, or lvchange --refresh once it is back)" {
		t.Errorf("warnings = %q", w)
	}
}

// The JSON of status keeps the server's fields at the top level, next to
// the warnings.
func TestStatusJSON(t *testing.T) {
	st := sampleStatus()
	b, err := json.Marshal(statusReport{Status: st, WarnFill: 80, Warnings: fillWarnings(st, 80)})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"pid", "transport", "read_bytes", "ops", "pools", "warnings", "warn_fill_percent"} {
		if _, ok := got[k]; !ok {
			t.Errorf("status JSON lacks %q: %s", k, b)
		}
	}
}

func TestWaitProgress(t *testing.T) {
	var b bytes.Buffer
	p := &waitProgress{w: &b, msg: "waiting", limit: time.Minute, start: time.Now().Add(-2 * time.Second)}
	p.tick()
	p.tick() // within 200ms of the last: not redrawn
	p.done()
	if got, want := b.String(), "\r\033[K/ waiting: 2s of at most 1m0s\r\033[K"; got != want {
		t.Errorf("progress wrote %q, want %q", got, want)
	}
	// Not a terminal: nothing at all.
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	q := newWaitProgress(f, "waiting", time.Minute)
	q.start = q.start.Add(-time.Hour)
	q.tick()
	q.done()
	if st, _ := f.Stat(); st.Size() != 0 {
		t.Errorf("progress wrote %d bytes to a file", st.Size())
	}
}

// fstab lines pass --metrics as an option like every other flag.
func TestMetricsMountOption(t *testing.T) {
	args, _, err := helperArgs("vg0", "/var/lib/images", []string{"metrics=127.0.0.1:9480,_netdev"}, false, newMountCmd().Flags())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range args {
		found = found || a == "--metrics=127.0.0.1:9480"
	}
	if !found {
		t.Errorf("helper args %q lack --metrics=127.0.0.1:9480", args)
	}
}
