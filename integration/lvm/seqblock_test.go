package lvm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"testing"
)

// Sequence-numbered blocks: each 4 KiB block a crash test writes says which
// file, which block and which generation it is, and the rest of it is a
// function of those three, so that after a crash every block reads as
// exactly one write (or as never written), and a block of another file or
// offset, a torn block or garbage is told apart.
const seqBlockSize = 4096

var seqMagic = [8]byte{'V', 'O', 'L', 'F', 'S', 'S', 'E', 'Q'}

// seqBlock is block idx of file (a number) in generation gen (> 0).
func seqBlock(file, idx, gen uint64) []byte {
	b := make([]byte, seqBlockSize)
	copy(b, seqMagic[:])
	binary.LittleEndian.PutUint64(b[8:], file)
	binary.LittleEndian.PutUint64(b[16:], idx)
	binary.LittleEndian.PutUint64(b[24:], gen)
	x := uint32(file*0x9e3779b1^idx*0x85ebca6b^gen*0xc2b2ae35) | 1
	for i := 32; i < len(b); i++ {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// seqGen returns the generation block b holds if it is block idx of file:
// 0 for an all-zero block (never written), an error for anything else.
func seqGen(b []byte, file, idx uint64) (uint64, error) {
	if allZero(b) {
		return 0, nil
	}
	if !bytes.Equal(b[:8], seqMagic[:]) {
		return 0, fmt.Errorf("block %d is neither zeros nor a written block (starts %q)", idx, b[:16])
	}
	f, i, g := binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:]), binary.LittleEndian.Uint64(b[24:])
	if f != file || i != idx {
		return 0, fmt.Errorf("block %d holds block %d of file %d (generation %d), not its own", idx, i, f, g)
	}
	if !bytes.Equal(b, seqBlock(f, i, g)) {
		return 0, fmt.Errorf("block %d (generation %d) is torn or damaged", idx, g)
	}
	return g, nil
}

// seqGens reads the generation of every block of path (its size in whole
// blocks; a partial last block is an error).
func seqGens(t testing.TB, path string, file uint64) []uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%seqBlockSize != 0 {
		t.Fatalf("%s: %d bytes, not whole blocks of %d", path, len(b), seqBlockSize)
	}
	gens := make([]uint64, len(b)/seqBlockSize)
	for i := range gens {
		g, err := seqGen(b[i*seqBlockSize:(i+1)*seqBlockSize], file, uint64(i))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		gens[i] = g
	}
	return gens
}
