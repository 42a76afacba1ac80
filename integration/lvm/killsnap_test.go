package lvm

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// seqWrite writes blocks [0, n) of f in order, generation gen of file,
// with fdatasync after every chunk blocks; acked counts the chunks the
// flush acknowledged. It returns at the end or at the first error (the
// server killed).
func seqWrite(f *os.File, file uint64, n, chunk int, gen uint64, acked *atomic.Int64) error {
	for i := 0; i < n; i++ {
		if _, err := f.WriteAt(seqBlock(file, uint64(i), gen), int64(i)*seqBlockSize); err != nil {
			return err
		}
		if (i+1)%chunk == 0 || i == n-1 {
			if err := f.Sync(); err != nil {
				return err
			}
			acked.Add(1)
		}
	}
	return nil
}

// checkSeqPrefix checks the generations got of a file that was being
// rewritten chunk by chunk in order (each chunk flushed before the next
// began) from base to generation gen, as seen at one instant (a
// snapshot, or the file after a crash): the first chunks hold gen, at
// most one chunk is part written (each block gen or base), every later
// block is base, and at least the first minChunks chunks hold gen. It
// returns how many blocks hold gen.
func checkSeqPrefix(got, base []uint64, gen uint64, chunk int, minChunks int64) (int, error) {
	if len(got) != len(base) {
		return 0, fmt.Errorf("%d blocks, want %d", len(got), len(base))
	}
	first := len(got) // the first block without gen
	for j, g := range got {
		if g != gen {
			first = j
			break
		}
	}
	mixedEnd := min((first/chunk+1)*chunk, len(got))
	count := first
	for j := first; j < len(got); j++ {
		switch {
		case j < mixedEnd && got[j] == gen:
			count++
		case got[j] != base[j]:
			return 0, fmt.Errorf("block %d has generation %d, want %d (before) or, in the chunk being written "+
				"(blocks %d-%d), %d", j, got[j], base[j], first/chunk*chunk, mixedEnd-1, gen)
		}
	}
	if int64(first/chunk) < minChunks && first < len(got) {
		return 0, fmt.Errorf("%d chunks of %d blocks hold generation %d, but %d were flushed before", first/chunk, chunk, gen, minChunks)
	}
	return count, nil
}

// SIGKILL of the server at random points while, at once, a client
// rewrites a thin image block by block with fdatasync after every 64 KiB,
// `volfs snapshot create` and `volfs clone` take a snapshot and a thin
// clone of it, and `volfs clone` copies a linear image; then a new mount,
// N rounds. Afterwards the snapshot and the clone either do not exist or
// hold the image as it was at one instant at or after the command began
// (a prefix of the rewrite, with every chunk flushed before the command),
// the copy is absent or complete, nothing half made is listed, no hidden
// LV, temporary `.volfs-clone-` file or intent tag is left, and the image
// holds every flushed chunk. What the rounds before made is unchanged.
func TestFaultKillSnapshot(t *testing.T) {
	rounds := faultIterations(t, 2)
	began := time.Now()
	e := newVG(t)
	e.thinPool("pool", "1g")
	// A linear image (made by lvm, filled before the mount) for the
	// clone by copy; the thin image o for the snapshots and thin clones.
	srcL := e.file("L", 8*mib, 21)
	sh(t, "lvcreate", "-q", "-y", "-L", "8m", "-n", "lin", e.vg)
	sh(t, "dd", "if="+srcL, "of=/dev/"+e.vg+"/lin", "bs=1M", "oflag=direct", "status=none")
	shaL := sha(t, srcL)
	m := e.mount("--thin-pool", "pool")
	// Small: an fsync through volfs takes a second or more in a busy
	// guest.
	const blocks, chunk, fileNo = 512, 8, 1 // 2 MiB, flushed every 32 KiB
	img := m.path("o")
	gen1 := filepath.Join(e.base, "o1")
	var b []byte
	for i := range blocks {
		b = append(b, seqBlock(fileNo, uint64(i), 1)...)
	}
	if err := os.WriteFile(gen1, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "cp", gen1, img)
	base := seqGens(t, img, fileNo)

	model := map[string]string{"lin": shaL} // files besides o, with their sha256
	snapModel := map[string]string{}        // snapshots of o, with their sha256
	outcomes := map[string]int{}
	for i := range rounds {
		gen := uint64(i + 2)
		s, c, k := fmt.Sprintf("s%d", i), fmt.Sprintf("c%d", i), fmt.Sprintf("k%d", i)
		f, err := os.OpenFile(img, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		var acked atomic.Int64
		werr := make(chan error, 1)
		go func() { werr <- seqWrite(f, fileNo, blocks, chunk, gen, &acked) }()
		waitFor(t, "the first chunk flushed", 60*time.Second, func() bool { return acked.Load() > 0 })
		ackedAtStart := acked.Load()
		ops := []*op{
			startOp(t, "snapshot", volfsBin, "snapshot", "create", img, s),
			startOp(t, "clone", volfsBin, "clone", img, m.path(c)),
			startOp(t, "copy", volfsBin, "clone", m.path("lin"), m.path(k)),
		}
		// Together they take 10-20 s in a guest on a busy host; kill
		// points stratified as in TestFaultKillLoop.
		span := 20 * time.Second / time.Duration(rounds)
		delay := time.Duration(i)*span + time.Duration(rand.Int64N(int64(span)))
		ackedBefore := m.killAt(t, delay, ops, &acked)
		select {
		case <-werr:
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: the writer still runs 60 s after the server was killed", i)
		}
		f.Close()
		lvsBefore, _ := e.lvs()
		logBefore := len(m.logText())
		m.start()

		for _, o := range ops {
			if o.before && o.err != nil {
				t.Fatalf("round %d: %s failed before the kill: %v: %s", i, o.name, o.err, o.out.String())
			}
		}
		names := m.names()
		fail := func(format string, args ...any) {
			t.Helper()
			var st []string
			for _, o := range ops {
				st = append(st, fmt.Sprintf("%s ended before: %v %v %s", o.name, o.before, o.err, strings.TrimSpace(o.out.String())))
			}
			t.Fatalf("round %d (kill after %v; %s): %s; listed %v; LVs %v", i, delay.Round(time.Millisecond),
				strings.Join(st, "; "), fmt.Sprintf(format, args...), names, e.files())
		}
		if dups := duplicates(names); len(dups) > 0 {
			fail("names listed twice: %v", dups)
		}
		for n, want := range model {
			if !slices.Contains(names, n) {
				fail("%s, settled before, is gone", n)
			}
			if sha(t, m.path(n)) != want {
				fail("%s, settled before, changed", n)
			}
		}
		snaps := m.snapshotNames("o")
		for n, want := range snapModel {
			if !slices.Contains(snaps, n) {
				fail("snapshot %s, settled before, is gone (snapshots %v)", n, snaps)
			}
			if sha(t, m.path(".snapshots/o/"+n)) != want {
				fail("snapshot %s, settled before, changed", n)
			}
		}
		var results []string

		// The image: every chunk flushed before the kill.
		got := seqGens(t, img, fileNo)
		nb, err := checkSeqPrefix(got, base, gen, chunk, ackedBefore)
		if err != nil {
			fail("image o: %v", err)
		}
		results = append(results, fmt.Sprintf("image %d/%d blocks new (%d chunks flushed)", nb, blocks, ackedBefore))

		// The snapshot and the thin clone: absent, or the image at one
		// instant after the command began.
		for _, x := range []struct {
			what, path string
			o          *op
			listed     bool
		}{
			{"snapshot", m.path(".snapshots/o/" + s), ops[0], slices.Contains(snaps, s)},
			{"clone", m.path(c), ops[1], slices.Contains(names, c)},
		} {
			if !x.listed {
				if x.o.before && x.o.err == nil {
					fail("the %s is gone after its command returned", x.what)
				}
				results = append(results, x.what+" absent")
				outcomes[x.what+" absent"]++
				continue
			}
			nb, err := checkSeqPrefix(seqGens(t, x.path, fileNo), base, gen, chunk, ackedAtStart)
			if err != nil {
				fail("%s %s: %v", x.what, x.path, err)
			}
			results = append(results, fmt.Sprintf("%s with %d blocks new", x.what, nb))
			outcomes[x.what+" made"]++
		}
		if slices.Contains(snaps, s) {
			snapModel[s] = sha(t, m.path(".snapshots/o/"+s))
		}
		if slices.Contains(names, c) {
			model[c] = sha(t, m.path(c))
		}

		// The copy: absent or complete; no partial copy left, and the
		// mount said it removed one.
		copyOp := ops[2]
		switch {
		case slices.Contains(names, k):
			if got := sha(t, m.path(k)); got != shaL {
				fail("the copy %s (%d bytes) differs from lin", k, size(t, m.path(k)))
			}
			model[k] = shaL
			results = append(results, "copy done")
			outcomes["copy done"]++
		case copyOp.before && copyOp.err == nil:
			fail("the copy %s is gone after volfs clone returned", k)
		default:
			results = append(results, "copy absent")
			outcomes["copy absent"]++
		}
		partial := false
		for n := range lvsBefore {
			partial = partial || strings.Contains(n, "volfs-clone-")
		}
		if partial {
			if !strings.Contains(m.logText()[logBefore:], "removed the partial copy of a clone that a killed server left") {
				fail("a partial copy was left, and the next mount's log does not say it removed it")
			}
			results = append(results, "partial copy removed")
		}

		// Nothing listed that no command made; as many snapshot LVs as
		// snapshots listed (a half-made one would not be listed).
		for _, n := range names {
			if _, ok := model[n]; !ok && n != "o" {
				fail("%s is listed but no command made it", n)
			}
		}
		for _, n := range snaps {
			if _, ok := snapModel[n]; !ok {
				fail("snapshot %s is listed but no command made it", n)
			}
		}
		lvs, _ := e.lvs()
		snapLVs := 0
		for n := range lvs {
			if strings.Contains(n, "volfs-snap-") {
				snapLVs++
			}
		}
		if snapLVs != len(snaps) {
			fail("%d snapshot LVs, %d snapshots listed %v", snapLVs, len(snaps), snaps)
		}
		e.noHiddenLVs(fmt.Sprintf("round %d (kill after %v)", i, delay))
		t.Logf("round %d (%v into the test): killed after %v: %s", i, time.Since(began).Round(time.Second),
			delay.Round(time.Millisecond), strings.Join(results, ", "))
		base = got

		// What the round before made has survived two kills: remove it
		// (the pool stays small).
		if i > 0 {
			prev := fmt.Sprintf("%d", i-1)
			if _, ok := snapModel["s"+prev]; ok {
				mustVolfs(t, "snapshot", "delete", img, "s"+prev)
				delete(snapModel, "s"+prev)
			}
			for _, n := range []string{"c" + prev, "k" + prev} {
				if _, ok := model[n]; ok {
					if err := os.Remove(m.path(n)); err != nil {
						t.Fatalf("rm %s: %v", n, err)
					}
					delete(model, n)
				}
			}
		}
	}
	t.Logf("outcomes of %d kills: %v", rounds, outcomes)
}

// snapshotNames lists MOUNT/.snapshots/IMAGE.
func (m *mount) snapshotNames(image string) []string {
	m.e.t.Helper()
	ents, err := os.ReadDir(m.path(".snapshots/" + image))
	if err != nil {
		m.e.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
