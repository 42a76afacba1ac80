package lvm

import (
	"bytes"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Other tools' changes show within a second (the listing is cached for a
// second, kernel entries and attributes time out after one); the waits
// allow for the slow guest.
const externalDelay = 3 * time.Second

func TestExternalChanges(t *testing.T) {
	e := newVG(t)
	m := e.mount()

	start := time.Now().Add(-time.Second) // lv_time has whole seconds
	sh(t, "lvcreate", "-q", "-Wn", "-L", "8m", "-n", "ext", e.vg)
	waitFor(t, "LV made by lvcreate listed", externalDelay, func() bool { return m.has("ext") })
	st, err := os.Stat(m.path("ext"))
	if err != nil || st.Size() != 8*mib || st.Mode().Perm() != 0o600 {
		t.Fatalf("an LV made by lvcreate: %v, %v", st, err)
	}
	// An LV without volfs tags has its creation time as mtime.
	if st.ModTime().Before(start) || st.ModTime().After(time.Now()) {
		t.Fatalf("mtime of an LV made by lvcreate: %v, want its creation time (after %v)", st.ModTime(), start)
	}

	sh(t, "lvextend", "-q", "-L", "12m", e.vg+"/ext")
	waitFor(t, "lvextend shown", externalDelay, func() bool { return size(t, m.path("ext")) == 12*mib })

	// A file volfs made records its exact size; when another tool resizes
	// its LV, the LV's size wins.
	src := e.file("src", 1_000_001, 1)
	sh(t, "cp", src, m.path("mine"))
	e.wantFileLV("mine", 1_000_001)
	sh(t, "lvextend", "-q", "-L", "8m", e.vg+"/mine")
	waitFor(t, "lvextend of a volfs file shown", externalDelay, func() bool { return size(t, m.path("mine")) == 8*mib })
	if !bytes.Equal(fileBytes(t, m.path("mine"), 0, 1_000_001), fileBytes(t, src, 0, 1_000_001)) {
		t.Fatal("data changed")
	}
	sh(t, "lvreduce", "-q", "-f", "-L", "4m", e.vg+"/mine")
	waitFor(t, "lvreduce of a volfs file shown", externalDelay, func() bool { return size(t, m.path("mine")) == 4*mib })

	// Another volfs (a host of a shared VG) grows a file and records its
	// new size while this one is not looking: the recorded size wins,
	// never the LV's, whose tail past the file's end holds old bytes.
	// (The file showed the whole LV until the listing after.)
	sh(t, "cp", src, m.path("other"))
	e.wantFileLV("other", 1_000_001)
	sh(t, "lvextend", "-q", "-L", "12m", e.vg+"/other")
	sh(t, "lvchange", "-q", "--deltag", "volfs.size=1000001", "--addtag", "volfs.size=9000001", e.vg+"/other")
	var seen int64
	waitFor(t, "the size another volfs recorded shown", externalDelay, func() bool {
		seen = size(t, m.path("other"))
		return seen != 1_000_001
	})
	if seen != 9_000_001 {
		t.Fatalf("a file another volfs grew to 9000001 bytes (LV 12 MiB) shows %d bytes", seen)
	}

	// An LV reduced below the recorded size while nothing is mounted: the
	// file is as large as the LV.
	src5 := e.file("src5", 5*mib+3, 2)
	sh(t, "cp", src5, m.path("cut"))
	e.wantFileLV("cut", 5*mib+3)
	m.umount()
	sh(t, "lvreduce", "-q", "-f", "-L", "4m", e.vg+"/cut")
	m.start()
	if n := size(t, m.path("cut")); n != 4*mib {
		t.Fatalf("size of a file whose LV was reduced below its recorded size: %d", n)
	}
	sameData(t, m.path("cut"), "/dev/"+e.vg+"/cut")

	sh(t, "lvrename", "-q", e.vg, "ext", "ext2")
	waitFor(t, "lvrename shown", externalDelay, func() bool { return !m.has("ext") && m.has("ext2") })
	sh(t, "lvremove", "-q", "--yes", e.vg+"/ext2")
	waitFor(t, "lvremove shown", externalDelay, func() bool { return !m.has("ext2") })

	// Pools and LVM's internal LVs are not files; thin LVs in the pool are.
	e.thinPool("tp", "64m")
	sh(t, "lvcreate", "-q", "-V", "16m", "--thinpool", "tp", "-n", "thin1", e.vg)
	waitFor(t, "thin LV listed", externalDelay, func() bool { return m.has("thin1") })
	if got := m.names(); !slices.Equal(got, []string{"cut", "mine", "other", "thin1"}) {
		t.Fatalf("listing with a thin pool: %v (LVs %v)", got, e.files())
	}
	for _, n := range []string{"tp", "tp_tdata", "tp_tmeta", "lvol0_pmspare", "[tp_tdata]"} {
		if _, err := os.Stat(m.path(n)); err == nil {
			t.Fatalf("%s is a file", n)
		}
	}
	if size(t, m.path("thin1")) != 16*mib {
		t.Fatal("thin LV size")
	}
}

func TestTag(t *testing.T) {
	e := newVG(t)
	sh(t, "lvcreate", "-q", "-Wn", "-L", "4m", "-n", "plain", e.vg)
	sh(t, "lvcreate", "-q", "-Wn", "-L", "4m", "-n", "tagged", "--addtag", "mine", e.vg)
	m := e.mount("--tag", "mine")
	if got := m.names(); !slices.Equal(got, []string{"tagged"}) {
		t.Fatalf("--tag mine lists %v", got)
	}
	if _, err := os.Stat(m.path("plain")); err == nil {
		t.Fatal("an LV without the tag is a file")
	}
	sh(t, "cp", e.file("src", 5000, 1), m.path("new"))
	l := e.wantFileLV2("new", 5000, "mine")
	if l.hasTag("volfs") {
		t.Fatalf("LV made under --tag mine also carries the default tag: %v", l.Tags)
	}
	// Creating a file named like an LV outside the mount fails.
	if err := os.WriteFile(m.path("plain"), []byte("x"), 0o644); err == nil {
		t.Fatal("created a file over an LV outside the mount")
	}
	if l := e.lv("plain"); len(l.Tags) != 0 {
		t.Fatalf("LV outside the mount was touched: %v", l.Tags)
	}
}

// wantFileLV2 is wantFileLV for a mount whose LVs carry tag.
func (e *env) wantFileLV2(name string, size int64, tag string) lv {
	e.t.Helper()
	l := e.waitLV(name, "trimmed", func(l lv) bool { return l.Size == roundUp(size) })
	if !l.hasTag(tag) {
		e.t.Fatalf("LV %s lacks tag %s: %v", name, tag, l.Tags)
	}
	return l
}

func TestRemountKeepsAttributes(t *testing.T) {
	e := newVG(t)
	m := e.mount()
	src := e.file("src", 1_000_001, 1)
	p := m.path("vm disk")
	sh(t, "cp", src, p)
	sh(t, "chmod", "0640", p)
	sh(t, "chown", "107:108", p)
	sh(t, "setfattr", "-n", "user.k", "-v", "hello", p)
	sh(t, "setfattr", "-n", "user.bin", "-v", "0x00ff2c3d", p)
	sh(t, "touch", "-m", "-d", "2021-02-03 04:05:06.123456789 UTC", p)
	want := time.Date(2021, 2, 3, 4, 5, 6, 123456789, time.UTC)
	l := e.waitLV("vm+20disk", "attributes in tags", func(l lv) bool {
		return l.hasTag("volfs.mode=0640") && l.hasTag("volfs.owner=107:108") &&
			l.hasTag("volfs.mtime=1612325106.123456789") && l.hasTag("volfs.size=1000001")
	})
	if x, _ := l.tag("volfs.x"); x == "" {
		t.Fatalf("no xattr tags: %v", l.Tags)
	}
	check := func() {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != 1_000_001 || st.Mode&0o7777 != 0o640 || st.Uid != 107 || st.Gid != 108 ||
			!time.Unix(st.Mtim.Unix()).Equal(want) {
			t.Fatalf("stat: size %d mode %o owner %d:%d mtime %v", st.Size, st.Mode, st.Uid, st.Gid, time.Unix(st.Mtim.Unix()))
		}
		if out := sh(t, "getfattr", "--absolute-names", "--only-values", "-n", "user.k", p); out != "hello" {
			t.Fatalf("user.k = %q", out)
		}
		buf := make([]byte, 64)
		if n, err := unix.Getxattr(p, "user.bin", buf); err != nil || string(buf[:n]) != "\x00\xff,=" {
			t.Fatalf("user.bin = %q, %v", buf[:max(n, 0)], err)
		}
		sameData(t, src, p)
	}
	check()
	// A new server reads everything back from the tags.
	m.remount()
	check()
}
