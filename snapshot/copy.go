package snapshot

import (
	"context"
	"fmt"
	"io"
	"time"
	"unsafe"
)

// CopyOptions tune Copy.
type CopyOptions struct {
	// Buffer is the size of each read and write (large sequential I/O);
	// a multiple of SkipZero and of 4096. Default 4 MiB.
	Buffer int
	// SkipZero, when not 0, is the block size below which Copy looks for
	// zeros: an all-zero block of the source is not written (a new thin
	// volume reads zeros where nothing was written, and a write would
	// allocate the block in the pool). 0 writes everything (a new linear
	// volume holds whatever its extents held before).
	SkipZero int
	// Progress, if not nil, is called with the bytes done (of n) at most
	// every ProgressEvery and once at the end.
	Progress      func(done, total int64)
	ProgressEvery time.Duration
}

// CopyStats is what Copy did.
type CopyStats struct {
	Read    int64 // bytes read from the source
	Written int64 // bytes written to the destination
	Skipped int64 // all-zero bytes not written (SkipZero)
}

// alignedBuffer returns n bytes aligned for O_DIRECT (4096).
func alignedBuffer(n int) []byte {
	const align = 4096
	raw := make([]byte, n+align)
	off := (align - int(uintptr(unsafe.Pointer(&raw[0]))%align)) % align
	return raw[off : off+n : off+n]
}

// Copy copies the first n bytes of src to dst at the same offsets, for a
// clone by copy. Both may be O_DIRECT block devices: every I/O is a
// multiple of 4096 bytes at a multiple of it from a 4096-aligned buffer,
// except a last partial one when n is not a multiple (the caller rounds n
// up to its devices' block size). It stops at ctx's cancellation.
func Copy(ctx context.Context, dst io.WriterAt, src io.ReaderAt, n int64, o CopyOptions) (CopyStats, error) {
	var st CopyStats
	if o.Buffer <= 0 {
		o.Buffer = 4 << 20
	}
	if o.SkipZero < 0 || (o.SkipZero > 0 && o.Buffer%o.SkipZero != 0) {
		return st, fmt.Errorf("copy: buffer %d is not a multiple of the zero block %d", o.Buffer, o.SkipZero)
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 500 * time.Millisecond
	}
	buf := alignedBuffer(o.Buffer)
	last := time.Now()
	for off := int64(0); off < n; {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("copy interrupted after %d of %d bytes: %w", off, n, err)
		}
		b := buf[:min(int64(len(buf)), n-off)]
		k, err := src.ReadAt(b, off)
		st.Read += int64(k)
		if k < len(b) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return st, fmt.Errorf("copy: read %d bytes at %d: %w", len(b), off, err)
		}
		if err := writeData(dst, b, off, o.SkipZero, &st); err != nil {
			return st, err
		}
		off += int64(len(b))
		if o.Progress != nil && (off == n || time.Since(last) >= o.ProgressEvery) {
			o.Progress(off, n)
			last = time.Now()
		}
	}
	if n == 0 && o.Progress != nil {
		o.Progress(0, 0)
	}
	return st, nil
}

// writeData writes b at off, leaving out the all-zero blocks of size
// skip (0: none) and writing each run of other blocks in one call.
func writeData(dst io.WriterAt, b []byte, off int64, skip int, st *CopyStats) error {
	if skip == 0 {
		return writeAll(dst, b, off, st)
	}
	start := -1 // the first block of the current run of data
	for i := 0; ; i += skip {
		if i < len(b) && !allZero(b[i:min(i+skip, len(b))]) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 {
			if err := writeAll(dst, b[start:min(i, len(b))], off+int64(start), st); err != nil {
				return err
			}
			start = -1
		}
		if i >= len(b) {
			return nil
		}
		st.Skipped += int64(min(skip, len(b)-i))
	}
}

func writeAll(dst io.WriterAt, b []byte, off int64, st *CopyStats) error {
	k, err := dst.WriteAt(b, off)
	st.Written += int64(k)
	if err == nil && k < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("copy: write %d bytes at %d: %w", len(b), off, err)
	}
	return nil
}

// allZero reports whether b holds only zeros, eight words at a time.
func allZero(b []byte) bool {
	i := 0
	if len(b) >= 64 && uintptr(unsafe.Pointer(&b[0]))%8 == 0 {
		for ; i+64 <= len(b); i += 64 {
			w := (*[8]uint64)(unsafe.Pointer(&b[i]))
			if w[0]|w[1]|w[2]|w[3]|w[4]|w[5]|w[6]|w[7] != 0 {
				return false
			}
		}
	}
	for _, c := range b[i:] {
		if c != 0 {
			return false
		}
	}
	return true
}
