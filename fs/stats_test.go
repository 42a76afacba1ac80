package fs

import (
	"syscall"
	"testing"
	"time"
)

func TestStats(t *testing.T) {
	var s Stats
	// Durations given, not measured: a loaded machine (or the race
	// detector) must not move a request into another bucket.
	s.record(OpRead, 10*time.Microsecond, 0)       // first bucket
	s.record(OpRead, 3*time.Millisecond, 0)        // 5 ms bucket
	s.record(OpRead, time.Minute, syscall.EIO)     // +Inf
	s.record(OpLookup, 0, syscall.ENOENT)          // an answer, not an error
	s.record(OpLookup, 0, syscall.EINTR)           // withdrawn by its caller (a signal), not an error
	s.record(OpGetxattr, 0, syscall.ENODATA)       // likewise
	s.record(OpGetxattr, 0, syscall.ENOTSUP)       // likewise (ls -l's ACL query)
	s.record(OpWrite, 0, syscall.ENOSPC)           // an error
	s.ringRecord(opWrite, time.Millisecond, 1<<20) // the ring's fast path
	s.ringRecord(opRead, time.Millisecond, 4096)   // likewise
	s.ringRecord(opFsync, time.Millisecond, 0)     // likewise
	snap := s.Snapshot()
	r := snap.Ops["read"]
	if r.Requests != 4 || r.Errors != 1 || r.Seconds < 60 {
		t.Errorf("read = %+v", r)
	}
	if r.Buckets[0] != 1 || r.Buckets[len(r.Buckets)-1] != 3 {
		t.Errorf("read buckets = %v: want 1 in the first, 3 below the last bound", r.Buckets)
	}
	if i := 7; LatencyBuckets[i] != 5e-3 || r.Buckets[i] != 3 || r.Buckets[i-1] != 2 {
		t.Errorf("read buckets = %v: want the 3 ms request in the 5 ms bucket", r.Buckets)
	}
	if c := snap.Ops["lookup"]; c.Requests != 2 || c.Errors != 0 {
		t.Errorf("lookup = %+v", c)
	}
	if c := snap.Ops["getxattr"]; c.Errors != 0 {
		t.Errorf("getxattr = %+v", c)
	}
	if c := snap.Ops["write"]; c.Requests != 2 || c.Errors != 1 {
		t.Errorf("write = %+v", c)
	}
	if c := snap.Ops["fsync"]; c.Requests != 1 {
		t.Errorf("fsync = %+v", c)
	}
	if snap.ReadBytes != 4096 || snap.WrittenBytes != 1<<20 {
		t.Errorf("bytes read %d, written %d", snap.ReadBytes, snap.WrittenBytes)
	}
	if _, ok := snap.Ops["rename"]; ok {
		t.Error("an operation never requested is in the snapshot")
	}
}

// The data path's counting allocates nothing.
func TestStatsDoNotAllocate(t *testing.T) {
	var s Stats
	start := time.Now()
	if n := testing.AllocsPerRun(100, func() {
		s.done(OpWrite, start, 0)
		s.ringDone(opRead, start, 4096)
	}); n != 0 {
		t.Errorf("%v allocations per request", n)
	}
}

func BenchmarkStatsDone(b *testing.B) {
	var s Stats
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.done(OpRead, time.Now(), 0)
		}
	})
}
