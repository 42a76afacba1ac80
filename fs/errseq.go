package fs

import (
	"sync/atomic"
	"syscall"
)

// errSeq records an image's device write-back errors and reports each to
// the open files the way the kernel's errseq_t does for a file's mapping
// (mm/filemap.c, lib/errseq.c): every handle that was open when an error
// happened sees it once, from fsync (or close, see handle.flushPages); an
// error no fsync has reported yet is also seen by a handle opened later
// (filemap_sample_wb_err), so closing the last handle never loses it.
//
// volfs needs its own record because the device's errors reach it through
// one descriptor shared by every handle: the kernel tells that descriptor
// once, and volfs fans the error out. The value packs a counter, two flags
// and the errno; it is changed with compare-and-swap, so the io_uring
// queues record errors without taking a lock.
type errSeq struct{ v atomic.Uint64 }

const (
	errnoMask   = 1<<16 - 1
	seenBit     = 1 << 16 // an fsync reported the current error
	reportedBit = 1 << 17 // a handle reported it (fsync or close)
	errFlags    = seenBit | reportedBit
	counterOne  = 1 << 18
)

// set records a new error. As in the kernel, an error nobody has reported
// yet is replaced, not counted twice: each handle still sees one error.
func (s *errSeq) set(e syscall.Errno) {
	if e == 0 || e == syscall.ENOSYS || e > errnoMask {
		e = syscall.EIO // never ENOSYS to the kernel (see toErrno)
	}
	for {
		old := s.v.Load()
		v := old&^(errFlags|errnoMask) | uint64(e)&errnoMask
		if old&reportedBit != 0 {
			v += counterOne
		}
		if v == old || s.v.CompareAndSwap(old, v) {
			return
		}
	}
}

// sample is what a new handle starts from: the current error if some fsync
// reported it, else nothing (so the handle will see it).
func (s *errSeq) sample() uint64 {
	v := s.v.Load()
	if v&seenBit == 0 {
		return 0
	}
	return v &^ errFlags
}

// check returns the error recorded since *since, if any, and advances
// *since. seen says whether this report counts for handles opened later
// (fsync) or not (close: a program that checks fsync but not close still
// gets the error from a later fsync, as from the raw device).
func (s *errSeq) check(since *uint64, seen bool) syscall.Errno {
	for {
		v := s.v.Load()
		if v&^errFlags == *since || v&errnoMask == 0 {
			return 0
		}
		nv := v | reportedBit
		if seen {
			nv |= seenBit
		}
		if nv != v && !s.v.CompareAndSwap(v, nv) {
			continue
		}
		*since = v &^ errFlags
		return syscall.Errno(v & errnoMask)
	}
}

// any reports whether an error was recorded and not forgotten.
func (s *errSeq) any() bool { return s.v.Load() != 0 }

// forgetSeen drops an error every handle has had a chance to see: called
// once no handle is open, it keeps an error no fsync reported.
func (s *errSeq) forgetSeen() {
	if v := s.v.Load(); v&seenBit != 0 {
		s.v.CompareAndSwap(v, 0)
	}
}
