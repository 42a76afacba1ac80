package fs

import (
	"math/bits"
	"sync"
	"unsafe"
)

// Aligned buffers for O_DIRECT, pooled by power-of-two size from 4 KiB to
// maxIO, so the data path allocates nothing per request.
const (
	bufAlign = 4096
	minShift = 12
	maxShift = 20
	maxIO    = 1 << maxShift
)

var bufPools [maxShift - minShift + 1]sync.Pool

func init() {
	for i := range bufPools {
		size := 1 << (minShift + i)
		bufPools[i].New = func() any {
			raw := make([]byte, size+bufAlign)
			off := (bufAlign - int(uintptr(unsafe.Pointer(&raw[0]))%bufAlign)) % bufAlign
			b := raw[off : off+size : off+size]
			return &b
		}
	}
}

func poolIndex(n int) int {
	if n <= 1<<minShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minShift
}

// getBuf returns an aligned buffer of length n (n <= maxIO).
func getBuf(n int) *[]byte {
	b := bufPools[poolIndex(n)].Get().(*[]byte)
	*b = (*b)[:n]
	return b
}

func putBuf(b *[]byte) {
	*b = (*b)[:cap(*b)]
	bufPools[poolIndex(cap(*b))].Put(b)
}

func isAligned(p []byte, align int) bool {
	return len(p) == 0 || uintptr(unsafe.Pointer(&p[0]))%uintptr(align) == 0
}
