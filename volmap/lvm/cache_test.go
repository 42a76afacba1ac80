package lvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volfs/volfs/volmap"
)

// listLVM is an lvm binary (a shell script) that answers lvs with the
// JSON in dir/report as it was when it started, waiting until dir/gate exists when dir/hold did
// then (a run counted in calls has decided whether to wait: removing hold
// after does not release it), and appends a line to dir/calls for each run.
type listLVM struct {
	t   *testing.T
	dir string
}

func newListLVM(t *testing.T, files int) *listLVM {
	t.Helper()
	f := &listLVM{t: t, dir: t.TempDir()}
	script := `#!/bin/sh
d=` + f.dir + `
r=$(cat $d/report)
h=; [ -e $d/hold ] && h=1
echo "$1" >> $d/calls
if [ -n "$h" ]; then while [ ! -e $d/gate ]; do sleep 0.01; done; fi
if [ -e $d/fail ]; then echo "  Volume group not readable" >&2; exit 5; fi
echo "$r"
`
	if err := os.WriteFile(filepath.Join(f.dir, "lvm"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	f.setFiles(files)
	return f
}

func (f *listLVM) setFiles(n int) {
	var b strings.Builder
	b.WriteString(`{"report":[{"lv":[`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"lv_name":"img%d", "lv_uuid":"uuid-%d", "lv_size":"4194304", "lv_attr":"-wi-------", `+
			`"lv_tags":"", "pool_lv":"", "data_percent":"", "lv_role":"public", "lv_layout":"linear", `+
			`"segtype":"linear", "lv_dm_path":"", "lv_active":"", "lv_skip_activation":"", `+
			`"lv_kernel_major":"-1", "lv_kernel_minor":"-1", "chunk_size":"0", "discards":"", `+
			`"lv_time":"2026-01-02 03:04:05 +0000", "vg_missing_pv_count":"0"}`, i, i)
	}
	b.WriteString("]}]}\n")
	if err := os.WriteFile(filepath.Join(f.dir, "report"), []byte(b.String()), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *listLVM) calls() int {
	b, _ := os.ReadFile(filepath.Join(f.dir, "calls"))
	return strings.Count(string(b), "\n")
}

func (f *listLVM) touch(name string) {
	if err := os.WriteFile(filepath.Join(f.dir, name), nil, 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *listLVM) rm(name string) { _ = os.Remove(filepath.Join(f.dir, name)) }

// fakeClock is a settable clock.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func cacheDriver(t *testing.T, f *listLVM) (*Driver, *fakeClock) {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	d := &Driver{cfg: Config{VG: "vg", CacheTTL: time.Second}, log: slog.New(slog.DiscardHandler),
		lvm: &Runner{Path: filepath.Join(f.dir, "lvm")}, tag: DefaultTag, now: c.now, renewing: make(chan struct{}, 1)}
	return d, c
}

// lookupAll looks up every file from many goroutines at once (what the
// kernel does during `ls -l`).
func lookupAll(t *testing.T, d *Driver, files int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, files)
	for i := range files {
		wg.Go(func() {
			if _, err := d.Lookup(context.Background(), fmt.Sprintf("img%d", i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// waitIdle waits for a refresh in flight to finish.
func waitIdle(d *Driver) {
	d.cacheMu.Lock()
	f := d.flight
	d.cacheMu.Unlock()
	if f != nil {
		<-f.done
	}
}

func TestCacheOneLVSForManyLookups(t *testing.T) {
	const files = 1000
	f := newListLVM(t, files)
	d, clock := cacheDriver(t, f)

	// Cold: a thousand concurrent lookups share one lvs.
	lookupAll(t, d, files)
	if n := f.calls(); n != 1 {
		t.Fatalf("cold lookups of %d files ran lvs %d times, want 1", files, n)
	}
	// Fresh: no lvs at all.
	clock.advance(400 * time.Millisecond)
	lookupAll(t, d, files)
	if vols, err := d.List(context.Background()); err != nil || len(vols) != files {
		t.Fatalf("List: %d volumes, %v", len(vols), err)
	}
	if n := f.calls(); n != 1 {
		t.Fatalf("lookups of a fresh listing ran lvs %d more times", n-1)
	}

	// Past half the TTL: served at once from the listing while one
	// refresh runs in the background (held until the lookups are done).
	f.touch("hold")
	clock.advance(200 * time.Millisecond)
	lookupAll(t, d, files)
	f.touch("gate")
	waitIdle(d)
	f.rm("hold")
	f.rm("gate")
	if n := f.calls(); n != 2 {
		t.Fatalf("lookups of an aging listing ran lvs %d times, want 1 (in the background)", n-1)
	}

	// Past the TTL: lookups wait, for one lvs.
	clock.advance(2 * time.Second)
	lookupAll(t, d, files)
	if n := f.calls(); n != 3 {
		t.Fatalf("lookups of an expired listing ran lvs %d times, want 1", n-2)
	}
}

func TestCacheShowsOtherToolsChanges(t *testing.T) {
	f := newListLVM(t, 3)
	d, clock := cacheDriver(t, f)
	ctx := context.Background()
	if _, err := d.Lookup(ctx, "img2"); err != nil {
		t.Fatal(err)
	}
	f.setFiles(2) // lvremove by another tool
	// Within the TTL the old listing may serve; past it, never.
	clock.advance(600 * time.Millisecond)
	_, _ = d.Lookup(ctx, "img2")
	waitIdle(d)
	clock.advance(time.Second + time.Millisecond)
	if _, err := d.Lookup(ctx, "img2"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("a removed LV was found more than a TTL later: %v", err)
	}
}

func TestCacheInvalidation(t *testing.T) {
	f := newListLVM(t, 2)
	d, _ := cacheDriver(t, f)
	ctx := context.Background()
	if _, err := d.Lookup(ctx, "img1"); err != nil {
		t.Fatal(err)
	}
	// A refresh in flight when the driver changes the VG must neither be
	// installed nor serve the requests that come after the change.
	f.touch("hold")
	d.cacheMu.Lock()
	d.cache = nil
	old := d.startLocked(ctx, time.Time{})
	d.cacheMu.Unlock()
	for f.calls() < 2 { // the old refresh has read its report
		time.Sleep(5 * time.Millisecond)
	}
	f.setFiles(3) // the driver's own change, then its invalidation
	d.invalidate()
	f.touch("gate")
	if _, err := d.Lookup(ctx, "img2"); err != nil {
		t.Fatalf("a lookup after an invalidation got the listing from before it: %v", err)
	}
	<-old.done
	if _, ok := old.l.lvs["img2"]; ok {
		t.Fatal("test broken: the old refresh saw the change")
	}
	l, err := d.listing(ctx)
	if err != nil || len(l.lvs) != 3 {
		t.Fatalf("cached listing after an invalidation: %v, %v", l, err)
	}
	if n := f.calls(); n != 3 {
		t.Fatalf("lvs ran %d times, want 3", n)
	}
}

func TestCacheRefreshFailure(t *testing.T) {
	f := newListLVM(t, 2)
	d, clock := cacheDriver(t, f)
	ctx := context.Background()
	if _, err := d.Lookup(ctx, "img1"); err != nil {
		t.Fatal(err)
	}
	f.touch("fail")
	clock.advance(600 * time.Millisecond)
	for range 5 {
		if _, err := d.Lookup(ctx, "img1"); err != nil {
			t.Fatalf("a failing refresh ahead failed a lookup of a valid listing: %v", err)
		}
		waitIdle(d)
	}
	if n := f.calls(); n != 2 {
		t.Fatalf("a failing refresh ahead was retried at once: %d lvs runs, want 2", n)
	}
	clock.advance(time.Second)
	if _, err := d.Lookup(ctx, "img1"); err == nil {
		t.Fatal("a lookup of an expired listing ignored the failing lvs")
	}
	f.rm("fail")
	if _, err := d.Lookup(ctx, "img1"); err != nil {
		t.Fatal(err)
	}
}

// A refresh that started more than a TTL before a request does not serve
// it, and when it ends it does not replace the newer listing.
func TestCacheOldRefreshNotShared(t *testing.T) {
	f := newListLVM(t, 2)
	d, c := cacheDriver(t, f)
	ctx := context.Background()
	if _, err := d.Lookup(ctx, "img1"); err != nil {
		t.Fatal(err)
	}
	f.touch("hold")
	c.advance(700 * time.Millisecond) // past half the TTL: a refresh ahead starts
	if _, err := d.Lookup(ctx, "img1"); err != nil {
		t.Fatal(err)
	}
	d.cacheMu.Lock()
	old := d.flight
	d.cacheMu.Unlock()
	if old == nil {
		t.Fatal("test broken: no refresh ahead started")
	}
	for f.calls() < 2 { // the old refresh has read its report and waits
		time.Sleep(5 * time.Millisecond)
	}
	f.rm("hold")
	f.setFiles(3) // another tool's change
	c.advance(2 * time.Second)
	if _, err := d.Lookup(ctx, "img2"); err != nil {
		t.Fatalf("a lookup two TTLs after the refresh in flight started got its listing: %v", err)
	}
	f.touch("gate")
	<-old.done
	// It read the report before the change (calls counts after the read)
	// and ends after the newer refresh: its waiters get the newer one.
	if old.l == nil || len(old.l.lvs) != 3 {
		t.Fatalf("the old refresh gave its waiters %v, want the newer listing", old.l)
	}
	l, err := d.listing(ctx)
	if err != nil || len(l.lvs) != 3 {
		t.Fatalf("cached listing after the old refresh ended: %v, %v", l, err)
	}
}

// The driver's own change (a create) while a refresh is under way does
// not throw the refresh away: it installs with the change applied over
// it, and a request that joins it after the change sees the change. Many
// files created at once would otherwise keep every lookup waiting for yet
// another lvs.
func TestCachePatchDuringRefresh(t *testing.T) {
	f := newListLVM(t, 2)
	d, c := cacheDriver(t, f)
	ctx := context.Background()
	if _, err := d.Lookup(ctx, "img1"); err != nil {
		t.Fatal(err)
	}
	created := func(name string) LV {
		return LV{Name: name, UUID: "uuid-" + name, Size: 4 << 20, Role: []string{"public"}, SegType: "linear"}
	}

	// refreshAhead starts the calls'th lvs, a refresh ahead held at the
	// gate.
	refreshAhead := func(calls int) {
		t.Helper()
		c.advance(700 * time.Millisecond)
		if _, err := d.Lookup(ctx, "img1"); err != nil {
			t.Fatal(err)
		}
		for f.calls() < calls {
			time.Sleep(5 * time.Millisecond)
		}
	}

	// A refresh ahead is under way when a create patches its LV in.
	f.touch("hold")
	refreshAhead(2)
	d.patch(created("new1"))
	f.touch("gate")
	waitIdle(d)
	d.cacheMu.Lock()
	l := d.cache
	d.cacheMu.Unlock()
	if !l.at.Equal(c.now()) {
		t.Fatalf("the refresh under way during a create was not installed (listing from %v, now %v)", l.at, c.now())
	}
	if _, ok := l.lvs["new1"]; !ok || len(l.lvs) != 3 {
		t.Fatalf("installed listing %v: want the refresh's two LVs and the created one", l.lvs)
	}

	// A request that must wait joins the refresh under way, started
	// before a create, and sees the created LV.
	f.rm("gate")
	c.advance(3 * time.Second)
	done := make(chan error, 1)
	go func() { _, err := d.Lookup(ctx, "img0"); done <- err }()
	for f.calls() < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	d.patch(created("new2"))
	got := make(chan error, 1)
	go func() { _, err := d.Lookup(ctx, "new2"); got <- err }()
	time.Sleep(50 * time.Millisecond)
	f.touch("gate")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("a lookup after a create, served by the refresh under way: %v", err)
	}
	if n := f.calls(); n != 3 {
		t.Fatalf("%d lvs runs, want 3 (no refresh started for the lookup after the create)", n)
	}

	// A removal during a refresh ahead that read the LV before it: the
	// refresh's listing is installed without the LV.
	f.rm("gate")
	refreshAhead(4)
	d.forget("img0")
	if _, err := d.Lookup(ctx, "img0"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("a removed LV was looked up in the listing it was taken out of: %v", err)
	}
	f.touch("gate")
	waitIdle(d)
	if _, err := d.Lookup(ctx, "img0"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("a refresh that read a removed LV before its removal brought it back: %v", err)
	}
	if _, err := d.Lookup(ctx, "img1"); err != nil {
		t.Fatal(err)
	}

	// A lookup that joins a refresh which read an LV before its removal,
	// and an invalidation (another file's activation, an error) before
	// that refresh ends: the lookup still does not find the LV.
	f.rm("gate")
	c.advance(3 * time.Second)
	base := f.calls()
	first := make(chan error, 1)
	go func() { _, err := d.List(ctx); first <- err }()
	for f.calls() < base+1 {
		time.Sleep(5 * time.Millisecond)
	}
	d.forget("img1")
	after := make(chan error, 1)
	go func() { _, err := d.Lookup(ctx, "img1"); after <- err }()
	time.Sleep(50 * time.Millisecond)
	d.invalidate()
	f.touch("gate")
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-after; !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("a lookup after a removal, served by a refresh that read the LV before it and ended after an "+
			"invalidation, found it: %v", err)
	}
	if n := f.calls() - base; n != 1 {
		t.Fatalf("%d lvs runs, want 1 (the lookup after the removal joins the refresh under way)", n)
	}

	// The same, with a refresh that started after the first invalidation
	// ending before the old one (it shows the removal, and prunes the
	// driver's record of it), then another invalidation: the lookup gets
	// that newer listing.
	f.rm("gate")
	f.touch("hold")
	c.advance(3 * time.Second)
	base = f.calls()
	go func() { _, err := d.List(ctx); first <- err }()
	for f.calls() < base+1 {
		time.Sleep(5 * time.Millisecond)
	}
	d.forget("img1")
	f.setFiles(1) // what lvs shows from now on
	go func() { _, err := d.Lookup(ctx, "img1"); after <- err }()
	time.Sleep(50 * time.Millisecond)
	d.invalidate()
	c.advance(time.Millisecond)
	f.rm("hold")
	if _, err := d.Lookup(ctx, "img0"); err != nil {
		t.Fatal(err)
	}
	d.invalidate()
	f.touch("gate")
	<-first
	if err := <-after; !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("a lookup after a removal, served by a refresh that read the LV before it and ended after a "+
			"newer refresh and two invalidations, found it: %v", err)
	}
	if n := f.calls() - base; n != 2 {
		t.Fatalf("%d lvs runs, want 2", n)
	}
}

// TestCacheRenewal: an expired listing whose VG stamp has not changed
// serves at once, with a refresh behind it (held here: a request that
// waited for it would hang); a changed stamp or none makes requests wait
// for an lvs, as do the driver's own changes.
func TestCacheRenewal(t *testing.T) {
	const files = 100
	f := newListLVM(t, files)
	d, clock := cacheDriver(t, f)
	var stamp atomic.Value
	stamp.Store("s1")
	var stamps atomic.Int32
	d.stampOf = func() (string, error) {
		stamps.Add(1)
		s := stamp.Load().(string)
		if s == "" {
			return "", errors.New("a PV is unreadable")
		}
		return s, nil
	}
	lookupAll(t, d, files)
	if n := f.calls(); n != 1 {
		t.Fatalf("cold lookups ran lvs %d times", n)
	}

	// Unchanged: renewed, no request waits.
	clock.advance(5 * time.Second)
	f.touch("hold")
	lookupAll(t, d, files)
	if n := d.renewals.Load(); n != 1 {
		t.Fatalf("%d renewals, want 1", n)
	}
	f.touch("gate")
	waitIdle(d)
	f.rm("hold")
	f.rm("gate")
	if n := f.calls(); n != 2 {
		t.Fatalf("a renewal ran lvs %d times, want 1 (behind it)", n-1)
	}

	// Changed (another tool's lvremove): the requests wait for the lvs
	// and see the change; the stamp is read once, not once per request.
	f.setFiles(files - 1)
	stamp.Store("s2")
	stamps.Store(0)
	clock.advance(5 * time.Second)
	lookupAll(t, d, files-1)
	if _, err := d.Lookup(context.Background(), fmt.Sprintf("img%d", files-1)); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("an LV removed with the stamp changed was found: %v", err)
	}
	// One for the renewal, one before the lvs (a request that came after
	// the refresh had started may read it once more).
	if n := stamps.Load(); n > 3 {
		t.Fatalf("%d lookups of a changed VG read its stamp %d times", files-1, n)
	}
	// No stamp (a PV unreadable): no renewal.
	stamp.Store("")
	clock.advance(5 * time.Second)
	f.setFiles(files - 2)
	if _, err := d.Lookup(context.Background(), fmt.Sprintf("img%d", files-2)); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("an LV removed with no stamp was found: %v", err)
	}
	// The listing read without a stamp is never renewed, even when the
	// stamp is back.
	stamp.Store("s2")
	clock.advance(5 * time.Second)
	f.setFiles(files - 3)
	if _, err := d.Lookup(context.Background(), fmt.Sprintf("img%d", files-3)); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("a listing read without a stamp was renewed: %v", err)
	}
	if n := d.renewals.Load(); n != 1 {
		t.Fatalf("%d renewals, want still 1", n)
	}
	// The driver's own change: the listing it patched is not renewed.
	waitIdle(d)
	d.patch(LV{Name: "own", UUID: "uuid-own", Size: 4 << 20, Attr: "-wi-------"})
	clock.advance(5 * time.Second)
	calls := f.calls()
	lookupAll(t, d, files-3)
	if f.calls() != calls+1 || d.renewals.Load() != 1 {
		t.Fatalf("after an own change: %d lvs, %d renewals; want 1 lvs, no renewal", f.calls()-calls, d.renewals.Load()-1)
	}
}
