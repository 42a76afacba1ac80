package snapshot

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// sparseDev is a destination that records which ranges were written.
type sparseDev struct {
	data   []byte
	writes [][2]int64 // offset, length
}

func (d *sparseDev) WriteAt(p []byte, off int64) (int, error) {
	d.writes = append(d.writes, [2]int64{off, int64(len(p))})
	return copy(d.data[off:], p), nil
}

func TestCopy(t *testing.T) {
	const blk = 64 << 10
	src := make([]byte, 20*blk+1000)
	// Data in blocks 1, 2 (one run), 7 (one byte at its end) and the
	// partial last block; zeros elsewhere.
	for i := blk; i < 3*blk; i++ {
		src[i] = byte(i)
	}
	src[8*blk-1] = 1
	src[len(src)-1] = 9
	for _, tc := range []struct {
		what      string
		skip      int
		buffer    int
		wantWrite int64
		wantCalls int
	}{
		{"linear: every byte written", 0, 4 * blk, int64(len(src)), 6},
		{"thin: zero blocks skipped", blk, 4 * blk, 3*blk + 1000, 3},
		{"thin, runs split at buffer ends", blk, 2 * blk, 3*blk + 1000, 4},
	} {
		dst := &sparseDev{data: bytes.Repeat([]byte{0xee}, len(src))}
		if tc.skip > 0 {
			dst.data = make([]byte, len(src)) // a new thin volume reads zeros
		}
		var reports []int64
		st, err := Copy(context.Background(), dst, bytes.NewReader(src), int64(len(src)), CopyOptions{
			Buffer: tc.buffer, SkipZero: tc.skip, Progress: func(done, total int64) {
				if total != int64(len(src)) {
					t.Errorf("%s: progress total %d", tc.what, total)
				}
				reports = append(reports, done)
			}})
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if !bytes.Equal(dst.data, src) {
			t.Fatalf("%s: destination differs", tc.what)
		}
		if st.Written != tc.wantWrite || st.Read != int64(len(src)) || st.Written+st.Skipped != int64(len(src)) {
			t.Errorf("%s: stats %+v, want %d written", tc.what, st, tc.wantWrite)
		}
		if len(dst.writes) != tc.wantCalls {
			t.Errorf("%s: %d writes %v, want %d", tc.what, len(dst.writes), dst.writes, tc.wantCalls)
		}
		if len(reports) == 0 || reports[len(reports)-1] != int64(len(src)) {
			t.Errorf("%s: progress %v does not end at %d", tc.what, reports, len(src))
		}
	}
}

func TestCopyStops(t *testing.T) {
	src := bytes.Repeat([]byte{1}, 1<<20)
	dst := &sparseDev{data: make([]byte, len(src))}
	ctx, cancel := context.WithCancel(context.Background())
	_, err := Copy(ctx, dst, bytes.NewReader(src), int64(len(src)), CopyOptions{Buffer: 64 << 10,
		Progress: func(done, _ int64) {
			if done >= 256<<10 {
				cancel()
			}
		}, ProgressEvery: 1})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy: %v", err)
	}
	// A source shorter than n is an error, not a short copy.
	_, err = Copy(context.Background(), dst, bytes.NewReader(src[:1000]), 4096, CopyOptions{})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short source: %v", err)
	}
}

func TestAllZero(t *testing.T) {
	b := make([]byte, 300)
	for i := range b {
		if !allZero(b[i:]) {
			t.Fatalf("zeros from %d", i)
		}
		b[i] = 1
		if allZero(b) || allZero(b[i:]) {
			t.Fatalf("byte %d set, allZero true", i)
		}
		b[i] = 0
	}
}
