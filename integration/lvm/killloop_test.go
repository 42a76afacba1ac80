package lvm

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// faultIterations is how many rounds a fault loop runs: n by default (the
// CI size), VOLFS_FAULT_ITER when set (make faulttest sets more).
func faultIterations(t *testing.T, n int) int {
	if s := os.Getenv("VOLFS_FAULT_ITER"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("VOLFS_FAULT_ITER=%q: want a positive number", s)
		}
		return v
	}
	return n
}

// op is one client command of a kill round, started before the kill.
type op struct {
	name string
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
	// before: the command's exit was seen before the kill (only then does
	// its result have to survive); err is its exit error then.
	before bool
	err    error
}

func startOp(t *testing.T, name string, args ...string) *op {
	t.Helper()
	o := &op{name: name, cmd: exec.Command(args[0], args[1:]...), done: make(chan error, 1)}
	o.cmd.Stdout, o.cmd.Stderr = &o.out, &o.out
	if err := o.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { o.done <- o.cmd.Wait() }()
	return o
}

// poll records whether the op has ended by now.
func (o *op) poll() {
	if o.before {
		return
	}
	select {
	case o.err = <-o.done:
		o.before = true
	default:
	}
}

// wait waits for the op to end (after the kill, it fails on the dead
// mount); bounded, so that a client stuck on the dead mount fails the test.
func (o *op) wait(t *testing.T) {
	t.Helper()
	if o.before {
		return
	}
	select {
	case <-o.done:
	case <-time.After(60 * time.Second):
		_ = o.cmd.Process.Kill()
		<-o.done
		t.Errorf("%s still running 60 s after the server was killed", o.name)
	}
}

// SIGKILL of the server at random points while clients write and fsync a
// growing file, create a file, rename over an existing file and truncate
// (shrink or grow) another, all at once; after each remount every file is
// its old or its new version (a growing file: at least what fsync
// acknowledged, and never bytes that were not written), nothing is lost
// or listed twice, and no hidden LV or intent tag is left. The files of a
// round are checked again after the next round's kill.
func TestFaultKillLoop(t *testing.T) {
	rounds := faultIterations(t, 2)
	began := time.Now()
	e := newVG(t)
	m := e.mount()
	const growChunks = 8
	srcG := e.file("G", growChunks*mib, 11)
	srcC := e.file("C", 3*mib+4321, 12)
	srcA, srcB := e.file("A", mib+11, 13), e.file("B", 2*mib+22, 14)
	srcT := e.file("T", 6*mib, 15)
	shaC, shaA, shaB, shaT := sha(t, srcC), sha(t, srcA), sha(t, srcB), sha(t, srcT)
	bytesG, bytesT := fileBytes(t, srcG, 0, growChunks*mib), fileBytes(t, srcT, 0, 6*mib)

	// model: the files that must be listed, with their sha256 once settled.
	model := map[string]string{}
	outcomes := map[string]int{}
	for i := range rounds {
		g, c, ra, rb, tr := fmt.Sprintf("g%d", i), fmt.Sprintf("c%d", i), fmt.Sprintf("r%da", i),
			fmt.Sprintf("r%db", i), fmt.Sprintf("t%d", i)
		sh(t, "cp", srcA, m.path(ra))
		sh(t, "cp", srcB, m.path(rb))
		sh(t, "cp", srcT, m.path(tr))
		newT := int64(2 * mib)
		if i%2 == 1 {
			newT = 14 * mib
		}

		// The grower keeps the file open on fd 3 and writes chunk k
		// through /proc/self/fd/3 (the same file; the guest has no
		// /dev/fd), fsync'ed, then says
		// "k": once the mount is gone, nothing can reach another file of
		// the same name under the mount point.
		script := `exec 3<>"$2" || exit 1
k=0; while [ $k -lt ` + strconv.Itoa(growChunks) + ` ]; do
  dd if="$1" of=/proc/self/fd/3 bs=1M skip=$k seek=$k count=1 conv=notrunc,fsync status=none || exit 1
  echo $k; k=$((k+1))
done`
		var acked atomic.Int64 // chunks fsync acknowledged
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		grow := &op{name: "grow", cmd: exec.Command("sh", "-c", script, "sh", srcG, m.path(g)), done: make(chan error, 1)}
		grow.cmd.Stdout, grow.cmd.Stderr = pw, &grow.out
		if err := grow.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		go func() { grow.done <- grow.cmd.Wait() }()
		scanned := make(chan struct{})
		go func() {
			defer close(scanned)
			s := bufio.NewScanner(pr)
			for s.Scan() {
				if k, err := strconv.Atoi(s.Text()); err == nil {
					acked.Store(int64(k) + 1)
				}
			}
		}()
		// The four take 3-5 s together in an idle guest, several times
		// that on a loaded host. Stratified: round i of n kills at a
		// random point of the i-th n-th of 12 s, so even the 2 rounds of
		// CI kill once early and once after the first fsyncs were
		// acknowledged.
		span := 12 * time.Second / time.Duration(rounds)
		delay := time.Duration(i)*span + time.Duration(rand.Int64N(int64(span)))
		ops := []*op{grow,
			startOp(t, "create", "cp", srcC, m.path(c)),
			startOp(t, "rename", "mv", m.path(ra), m.path(rb)),
			startOp(t, "truncate", "truncate", "-s", strconv.FormatInt(newT, 10), m.path(tr))}
		ackedBefore := m.killAt(t, delay, ops, &acked)
		<-scanned
		pr.Close()
		m.start()

		// A client that ended before the kill ended well.
		for _, o := range ops {
			if o.before && o.err != nil {
				t.Fatalf("round %d: %s failed before the kill: %v: %s", i, o.name, o.err, o.out.String())
			}
		}

		// Files of the rounds before: unchanged.
		for n, want := range model {
			if !m.has(n) {
				t.Fatalf("round %d (kill after %v): %s, settled in an earlier round, is gone; listed %v",
					i, delay, n, m.names())
			}
			if got := sha(t, m.path(n)); got != want {
				t.Fatalf("round %d (kill after %v): %s, settled in an earlier round, changed", i, delay, n)
			}
		}
		names := m.names()
		if dups := duplicates(names); len(dups) > 0 {
			t.Fatalf("round %d: names listed twice: %v", i, dups)
		}
		results := []string{}
		check := func(o *op, format string, args ...any) {
			t.Helper()
			t.Fatalf("round %d (kill after %v; %s ended before the kill: %v, %v %s): %s; listed %v; LVs %v", i,
				delay.Round(time.Millisecond), o.name, o.before, o.err, strings.TrimSpace(o.out.String()),
				fmt.Sprintf(format, args...), names, e.files())
		}

		// The grower: at least the acknowledged chunks; never bytes that
		// were not written.
		if slices.Contains(names, g) {
			got := fileBytes(t, m.path(g), 0, size(t, m.path(g)))
			switch {
			case int64(len(got)) < ackedBefore*mib:
				check(grow, "%s has %d bytes, fsync acknowledged %d MiB", g, len(got), ackedBefore)
			case len(got) > len(bytesG) || !bytes.Equal(got, bytesG[:len(got)]):
				check(grow, "%s (%d bytes) is not a prefix of what was written", g, len(got))
			}
			results = append(results, fmt.Sprintf("grow %d/%d MiB (acked %d)", len(got)/mib, growChunks, ackedBefore))
			model[g] = sha(t, m.path(g))
		} else {
			if ackedBefore > 0 {
				check(grow, "%s is gone, fsync acknowledged %d MiB", g, ackedBefore)
			}
			results = append(results, "grow absent")
		}

		// The new file: complete if cp ended before the kill; else absent
		// or a prefix.
		create := ops[1]
		switch {
		case slices.Contains(names, c):
			got := fileBytes(t, m.path(c), 0, size(t, m.path(c)))
			want := fileBytes(t, srcC, 0, size(t, srcC))
			if create.before && create.err == nil && !bytes.Equal(got, want) {
				check(create, "%s has %d bytes, not cp's %d", c, len(got), len(want))
			}
			if len(got) > len(want) || !bytes.Equal(got, want[:len(got)]) {
				check(create, "%s (%d bytes) is not a prefix of what cp wrote", c, len(got))
			}
			if sha(t, m.path(c)) == shaC {
				results = append(results, "create done")
			} else {
				results = append(results, fmt.Sprintf("create partial %d", len(got)))
			}
			model[c] = sha(t, m.path(c))
		case create.before && create.err == nil:
			check(create, "%s is gone after cp returned", c)
		default:
			results = append(results, "create absent")
		}

		// The rename: old or new, never both or neither.
		rename := ops[2]
		hasA, hasB := slices.Contains(names, ra), slices.Contains(names, rb)
		switch {
		case !hasA && hasB && sha(t, m.path(rb)) == shaA:
			results = append(results, "rename new")
			model[rb] = shaA
		case hasA && hasB && sha(t, m.path(ra)) == shaA && sha(t, m.path(rb)) == shaB:
			if rename.before && rename.err == nil {
				check(rename, "mv returned success, but the rename is undone")
			}
			results = append(results, "rename old")
			model[ra], model[rb] = shaA, shaB
		default:
			check(rename, "%s listed %v, %s listed %v", ra, hasA, rb, hasB)
		}

		// The truncate: the old size and bytes, or the new size with the
		// old bytes below it and zeros above them.
		trunc := ops[3]
		if !slices.Contains(names, tr) {
			check(trunc, "%s is gone", tr)
		}
		got := fileBytes(t, m.path(tr), 0, size(t, m.path(tr)))
		switch {
		case int64(len(got)) == 6*mib && sha(t, m.path(tr)) == shaT:
			if trunc.before && trunc.err == nil && newT != 6*mib {
				check(trunc, "truncate returned success, but %s has its old size", tr)
			}
			results = append(results, "truncate old")
		case int64(len(got)) == newT:
			keep := min(newT, 6*mib)
			if !bytes.Equal(got[:keep], bytesT[:keep]) || !allZero(got[keep:]) {
				check(trunc, "%s has the new size %d but not the old bytes below it and zeros above", tr, newT)
			}
			results = append(results, "truncate new")
		default:
			check(trunc, "%s has %d bytes: neither the old size nor the new %d", tr, len(got), newT)
		}
		model[tr] = sha(t, m.path(tr))

		// Nothing listed that is not in the model.
		for _, n := range names {
			if _, ok := model[n]; !ok {
				t.Fatalf("round %d: %s is listed but no client made it (model %v)", i, n, model)
			}
		}
		if len(names) != len(model) {
			t.Fatalf("round %d: listed %v, want %d files", i, names, len(model))
		}
		e.noHiddenLVs(fmt.Sprintf("round %d (kill after %v)", i, delay))
		for _, r := range results {
			outcomes[r]++
		}
		t.Logf("round %d (%v into the test): killed after %v: %s", i, time.Since(began).Round(time.Second),
			delay.Round(time.Millisecond), strings.Join(results, ", "))

		// The files of the round before this one have survived two
		// kills: remove them (the VG stays small), keep this round's.
		if i > 0 {
			for n := range model {
				if roundOf(n) == i-1 {
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

// roundOf is the round number in a file name of TestFaultKillLoop ("g3",
// "r3a").
func roundOf(name string) int {
	n, _ := strconv.Atoi(strings.TrimRight(name[1:], "ab"))
	return n
}

func duplicates(names []string) []string {
	seen := map[string]bool{}
	var d []string
	for _, n := range names {
		if seen[n] {
			d = append(d, n)
		}
		seen[n] = true
	}
	return d
}

// noHiddenLVs fails the test if an LV of volfs's hidden names (moved aside,
// deleted while open, rolled back, a partial copy) or an intent tag is
// left in the VG. Snapshot LVs are hidden names too, and stay.
func (e *env) noHiddenLVs(when string) {
	e.t.Helper()
	lvs, _ := e.lvs()
	for n, l := range lvs {
		if strings.Contains(n, "volfs-") && !strings.Contains(n, "volfs-snap-") {
			e.t.Fatalf("%s: hidden LV %s left after the next mount (tags %v)", when, n, l.Tags)
		}
		for _, tag := range l.Tags {
			if strings.HasPrefix(tag, "volfs-replace=") || strings.HasPrefix(tag, "volfs-rollback=") {
				e.t.Fatalf("%s: LV %s keeps the intent tag %s", when, n, tag)
			}
		}
	}
}

// killAt sleeps until the kill point (random: what these tests explore),
// notes which operations had ended, kills the server and waits for every
// operation to end. It returns the fsyncs acknowledged before the kill.
func (m *mount) killAt(t *testing.T, delay time.Duration, ops []*op, acked *atomic.Int64) int64 {
	time.Sleep(delay)
	for _, o := range ops {
		o.poll()
	}
	before := acked.Load()
	m.crash()
	for _, o := range ops {
		o.wait(t)
	}
	return before
}
