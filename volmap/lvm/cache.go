package lvm

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/volfs/volfs/volmap"
)

// The listing cache.
//
// Every lookup, readdir and open is served from one listing of the VG (one
// lvs). `ls -l` of a thousand files makes a thousand lookups (READDIRPLUS
// entries, then the kernel's revalidations once its one-second entries
// expire), spread over as long as the listing takes; each must not cost an
// lvs. So:
//
//   - a listing younger than CacheTTL/2 is served as it is;
//   - one between CacheTTL/2 and CacheTTL old is served too, and a refresh
//     starts in the background (refresh ahead): no request waits for it;
//   - an older listing still serves while the refresh ahead runs, for as
//     long as the last refresh took (lvs of a thousand LVs can take longer
//     than half the TTL on a slow machine, and requests would then wait
//     for it);
//   - past that, the listing is renewed (served as if just read, with a
//     refresh behind it) when the VG's stamp shows that nothing was
//     committed or (de)activated since its lvs began (stamp.go);
//   - otherwise, or with no listing (the driver's own changes drop it), a
//     request waits for a refresh.
//
// A request that needs a refresh shares the one in flight, provided it
// started after the last invalidation (a refresh that started before one
// neither installs its result nor serves later requests) and no more than
// CacheTTL before the request: with a TTL of zero every request sees the
// VG as it was when the request came, even while an older lvs is running.
// A listing never replaces one whose lvs started later. A listing's age counts
// from the end of its lvs, so the listing served was read at most CacheTTL
// plus two lvs runs ago: other tools' changes show within that. A busy
// mount runs lvs at most about twice per CacheTTL, never once per file.

// flight is one refresh in progress; done is closed when l and err are set.
type flight struct {
	gen   uint64
	start time.Time
	done  chan struct{}
	l     *listing
	err   error
}

func (d *Driver) clock() time.Time {
	if d.now != nil {
		return d.now()
	}
	return time.Now()
}

// listing returns a listing no older than CacheTTL, or than CacheTTL plus
// the last refresh time while a refresh is under way.
func (d *Driver) listing(ctx context.Context) (*listing, error) {
	if d.cfg.CacheTTL < 0 {
		return d.refresh(ctx, d.clock())
	}
	d.cacheMu.Lock()
	l := d.servableLocked(ctx)
	d.cacheMu.Unlock()
	if l != nil {
		return l, nil
	}
	if l := d.renew(ctx); l != nil {
		return l, nil
	}
	d.cacheMu.Lock()
	f := d.startLocked(ctx, d.clock().Add(-d.cfg.CacheTTL))
	d.cacheMu.Unlock()
	return f.wait(ctx, d)
}

// servableLocked returns the cached listing if a request may have it
// without waiting (starting a refresh ahead when it is aging), or nil.
func (d *Driver) servableLocked(ctx context.Context) *listing {
	l := d.cache
	if l == nil {
		return nil
	}
	now := d.clock()
	age := now.Sub(l.at)
	if f := d.flight; f != nil && f.gen == d.gen && age <= d.cfg.CacheTTL+d.took {
		return l // stale, but its refresh is under way
	}
	if age > d.cfg.CacheTTL {
		return nil
	}
	// A refresh ahead that failed is not retried for half a TTL (no lvs
	// storm); a request past the TTL reports the error.
	if age > d.cfg.CacheTTL/2 && now.Sub(d.failedAt) > d.cfg.CacheTTL/2 {
		d.startLocked(ctx, now)
	}
	return l
}

// renew returns the expired cached listing as read now, when the VG's
// stamp shows that nothing was committed or (de)activated since its lvs
// (stamp.go), and starts a refresh behind it for the figures that move
// without a commit. Otherwise it returns nil: the request waits for an
// lvs. One renewal at a time: the requests behind it find the listing
// renewed.
func (d *Driver) renew(ctx context.Context) *listing {
	select {
	case d.renewing <- struct{}{}:
		defer func() { <-d.renewing }()
	case <-ctx.Done():
		return nil // the request ends waiting for a refresh (listing)
	}
	d.cacheMu.Lock()
	l := d.servableLocked(ctx)
	old := d.cache
	// A refresh the request may share is under way (the VG changed, and
	// the request before this one started it): wait for it rather than
	// read the stamp again, once per request of an ls -l.
	f := d.flight
	joins := f != nil && f.gen == d.gen && !f.start.Before(d.clock().Add(-d.cfg.CacheTTL))
	d.cacheMu.Unlock()
	if l != nil {
		return l
	}
	if old == nil || old.stamp == "" || joins {
		return nil
	}
	at := d.clock()
	stamp, err := d.stamp(old.watch)
	if err != nil || stamp != old.stamp {
		d.log.Debug("the VG changed since the listing: reading it again", slog.Any("err", err))
		return nil
	}
	d.cacheMu.Lock()
	defer d.cacheMu.Unlock()
	if d.cache != old {
		return d.servableLocked(ctx) // replaced or dropped meanwhile
	}
	r := *old
	r.at = at
	d.cache = &r
	if now := d.clock(); now.Sub(d.failedAt) > d.cfg.CacheTTL/2 {
		d.startLocked(ctx, now)
	}
	d.renewals.Add(1)
	d.log.Debug("the VG has not changed since the listing: renewed")
	return &r
}

// startLocked returns the refresh in flight for the current generation of
// the cache if it started at notBefore or later, and starts one otherwise.
// The refresh does not stop when the request that started it is
// interrupted: others may be waiting for it.
func (d *Driver) startLocked(ctx context.Context, notBefore time.Time) *flight {
	if f := d.flight; f != nil && f.gen == d.gen && !f.start.Before(notBefore) {
		return f
	}
	f := &flight{gen: d.gen, start: d.clock(), done: make(chan struct{})}
	d.flight = f
	go d.fly(context.WithoutCancel(ctx), f)
	return f
}

// refreshTimeout bounds one refresh of the listing.
const refreshTimeout = 2 * time.Minute

func (d *Driver) fly(ctx context.Context, f *flight) {
	defer close(f.done)
	// Bounded: every lookup waiting on this flight would otherwise wait
	// for as long as an lvs stuck behind another tool's VG lock.
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	start := time.Now()
	f.l, f.err = d.refresh(ctx, f.start)
	took := time.Since(start)
	d.cacheMu.Lock()
	// The stale-while-revalidate window grows with a slow lvs, but never
	// past another TTL.
	d.took = min(took, d.cfg.CacheTTL)
	if d.flight == f {
		d.flight = nil
	}
	if f.err != nil {
		d.failedAt = d.clock()
	} else {
		d.failedAt = time.Time{}
	}
	d.cacheMu.Unlock()
	if f.err != nil {
		d.log.Debug("listing refresh failed", slog.Any("err", f.err))
	}
}

// wait returns the flight's listing, or the last one installed if its lvs
// started later (a refresh that started after an invalidation ended
// first: it has pruned the driver's own changes it shows, which the
// flight's listing may not), with the driver's own changes made since
// applied over it.
func (f *flight) wait(ctx context.Context, d *Driver) (*listing, error) {
	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		d.cacheMu.Lock()
		defer d.cacheMu.Unlock()
		l := f.l
		if d.latest != nil && d.latest.started.After(l.started) {
			l = d.latest
		}
		return d.withOwnLocked(l, false), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the listing: %w", context.Cause(ctx))
	}
}

// fileAtHand is file for the driver's own changes to a file this process
// uses (Open, Resize, SetAttrs): it takes the LV from the listing at hand,
// however old, when the LV's device shows that the name still is that LV,
// active and of that size (a stat and two sysfs reads, no lvm command);
// otherwise it is file, which waits for a listing no older than the TTL.
// With lvm slower than the TTL (a loaded machine, many files copied in
// at once), waiting there made every create, close and trim wait for an
// lvs of the whole VG. Another tool's rename, removal, re-creation or
// resize of the LV shows at once; a change of its tags only at the next
// refresh of the listing, which lookups and readdir run. Not on a shared
// VG: there another host's volfs changes the tags of LVs it does not hold
// (a chmod), and SetAttrs's diff must be made against a listing no older
// than the TTL.
func (d *Driver) fileAtHand(ctx context.Context, name string) (LV, error) {
	lvName, err := volmap.EncodeName(name)
	if err != nil {
		return LV{}, err
	}
	d.cacheMu.Lock()
	l := d.cache
	d.cacheMu.Unlock()
	if l != nil && d.shared == nil {
		if lv, ok := l.lvs[lvName]; ok && d.deviceIs(lv) {
			if _, isFile := d.fileName(lv); isFile {
				return lv, nil
			}
		}
	}
	return d.file(ctx, name)
}

// deviceIs reports whether lv is active and its device node is that LV
// (device-mapper UUID) at lv's size.
func (d *Driver) deviceIs(lv LV) bool {
	if !lv.Active || lv.UUID == "" {
		return false
	}
	rdev, ok := blockDevAt(d.devPath(lv.Name))
	if !ok {
		return false
	}
	if uuid, err := dmUUIDOf(rdev); err != nil || uuid != d.dmUUID(lv) {
		return false
	}
	sectors, err := os.ReadFile(sysBlock(rdev) + "size")
	if err != nil {
		return false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(sectors)), 10, 64)
	return err == nil && n*512 == lv.Size
}
