package lvm

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// `volfs clone` of a linear image is a full copy made by the server into a
// new thin LV: the same bytes, mode and size, an identity of its own,
// independent of the source, and the pool grows by about the data, not by
// the image's size (all-zero blocks are not written). A copy that fails
// (the pool fills) or is interrupted (the CLI is killed) leaves nothing.
func TestCloneByCopy(t *testing.T) {
	const lvSize, poolSize, poolBytes = 64 * mib, "128m", 128 * mib
	e := newVG(t)
	e.thinPool("pool", poolSize)
	m := e.mount("--thin-pool", "pool")
	// A linear image made outside volfs, zeroed (the scratch disk keeps
	// the bytes of earlier tests), with data in two places.
	sh(t, "lvcreate", "-q", "-L", "64m", "-n", "lin", "-Wy", "--addtag", "volfs", e.vg)
	sh(t, "dd", "if=/dev/zero", "of=/dev/"+e.vg+"/lin", "bs=4M", "count=16", "oflag=direct", "status=none")
	waitFor(t, "linear LV listed", externalDelay, func() bool { return m.has("lin") })
	dataA, dataB := e.file("a", 6*mib+12345, 1), e.file("b", 3*mib, 2)
	src := m.path("lin")
	sh(t, "dd", "if="+dataA, "of="+src, "bs=1M", "conv=notrunc", "status=none")
	sh(t, "dd", "if="+dataB, "of="+src, "bs=1M", "seek=40", "conv=notrunc", "status=none")
	if err := os.Chmod(src, 0o604); err != nil {
		t.Fatal(err)
	}
	before := e.lv("pool").DataPercent

	out := mustVolfs(t, "clone", src, m.path("copy"))
	dst := m.path("copy")
	sameData(t, dst, src)
	st, err := os.Stat(dst)
	if err != nil || st.Mode().Perm() != 0o604 || st.Size() != lvSize || inoOf(t, dst) == inoOf(t, src) {
		t.Fatalf("copy: %v %v, ino %d (source %d); volfs said %q", st, err, inoOf(t, dst), inoOf(t, src), out)
	}
	l := e.lv("copy")
	if l.SegType != "thin" || l.Pool != "pool" {
		t.Fatalf("copy's LV: segment type %s pool %q, want thin in pool", l.SegType, l.Pool)
	}
	// About 9.01 MiB of data (blocks of 64 KiB): far from the 64 MiB a
	// copy of every byte would take.
	grown := (e.lv("pool").DataPercent - before) / 100 * poolBytes
	if grown < 9*mib || grown > 11*mib {
		t.Errorf("the pool grew by %.1f MiB for a copy of 9 MiB of data in a 64 MiB image", grown/mib)
	}
	t.Logf("pool grew by %.2f MiB", grown/mib)
	if strings.Contains(strings.Join(e.files(), " "), "volfs-clone") {
		t.Fatalf("temporary LV left: %v", e.files())
	}

	// Independent both ways.
	sh(t, "dd", "if="+dataB, "of="+src, "bs=1M", "conv=notrunc", "status=none")
	if string(fileBytes(t, dst, 0, 6*mib)) != string(fileBytes(t, dataA, 0, 6*mib)) {
		t.Fatal("a write to the source shows in the copy")
	}
	sh(t, "dd", "if="+dataA, "of="+dst, "bs=1M", "seek=20", "conv=notrunc", "status=none")
	if string(fileBytes(t, src, 20*mib, 6*mib)) == string(fileBytes(t, dataA, 0, 6*mib)) {
		t.Fatal("a write to the copy shows in the source")
	}
	// Onto an existing file: refused.
	if out, err := volfs("clone", src, dst); err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("clone onto an existing file: %v: %s", err, out)
	}

	// Failed: 160 MiB of data do not fit in what is left of the pool.
	sh(t, "lvcreate", "-q", "-L", "160m", "-n", "big", "-Wy", "--addtag", "volfs", e.vg)
	sh(t, "dd", "if=/dev/urandom", "of=/dev/"+e.vg+"/big", "bs=4M", "count=40", "oflag=direct", "status=none")
	waitFor(t, "linear LV listed", externalDelay, func() bool { return m.has("big") })
	if out, err := volfs("clone", m.path("big"), m.path("full")); err == nil {
		t.Fatalf("a copy larger than the pool's free space succeeded: %s", out)
	} else {
		t.Logf("copy into a full pool: %v: %s", err, out)
	}
	if m.has("full") || strings.Contains(strings.Join(e.files(), " "), "volfs-clone") {
		t.Fatalf("a failed copy left %v; LVs %v", m.names(), e.files())
	}
	if !strings.Contains(m.logText(), "removed the partial copy") {
		t.Errorf("the log does not say the partial copy was removed:\n%s", m.logText())
	}

	// Interrupted: the CLI killed while the server copies (room in the
	// pool this time, so only the interruption can stop the copy).
	sh(t, "lvremove", "-q", "-y", e.vg+"/copy")
	sh(t, "lvextend", "-q", "-L", "512m", e.vg+"/pool")
	cli := exec.Command(volfsBin, "clone", m.path("big"), m.path("int"))
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	// The temporary file is listed once its LV is made; the copy of 160
	// MiB takes from one to several seconds after that in the guest, so
	// the interruption lands in the copy or at the end of the create.
	waitFor(t, "the temporary file listed", time.Minute, func() bool {
		return slices.ContainsFunc(m.names(), func(n string) bool { return strings.HasPrefix(n, ".volfs-clone-") })
	})
	_ = cli.Process.Signal(syscall.SIGINT)
	err = cli.Wait()
	t.Logf("clone after SIGINT: %v", err)
	waitFor(t, "the partial copy removed", time.Minute, func() bool {
		return !slices.ContainsFunc(e.files(), func(n string) bool { return strings.Contains(n, "volfs-clone") })
	})
	if m.has("int") {
		t.Fatalf("the copy ended before the interruption (int is listed): make the source larger")
	}
	// Interrupted in the copy, or while its LV was made: either way the
	// log says what was removed.
	if lt := m.logText(); !strings.Contains(lt, "copy interrupted") && !strings.Contains(lt, "removed half-created LV") {
		t.Errorf("the log does not say the copy was interrupted:\n%s", lt)
	}
}
