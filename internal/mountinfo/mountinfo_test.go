package mountinfo

import (
	"fmt"
	"strings"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/mnt/a\040b\134c`: `/mnt/a b\c`,
		`/plain`:           `/plain`,
		`/odd\04`:          `/odd\04`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMountPoint(t *testing.T) {
	if ok, fstype := MountPoint("/proc"); !ok || fstype != "proc" {
		t.Errorf("MountPoint(/proc) = %v, %q", ok, fstype)
	}
	if ok, _ := MountPoint(t.TempDir()); ok {
		t.Error("a fresh temporary directory is a mount point")
	}
}

func TestParse(t *testing.T) {
	m, ok := parse(`612 29 0:93 / /tmp/a\040b rw,nosuid,nodev,relatime shared:321 - fuse.volfs volfs rw,user_id=0,group_id=0,default_permissions,allow_other`)
	want := Mount{Dir: "/tmp/a b", FSType: "fuse.volfs", Source: "volfs", Major: 0, Minor: 93}
	if !ok || m != want {
		t.Fatalf("parse = %+v %v, want %+v", m, ok, want)
	}
	if _, ok := parse("garbage"); ok {
		t.Fatal("parsed garbage")
	}
	if m, ok := Find("/proc"); !ok || m.FSType != "proc" {
		t.Errorf("Find(/proc) = %+v %v", m, ok)
	}
}

func TestAll(t *testing.T) {
	all, err := All()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all {
		if m.Dir == "/proc" && m.FSType == "proc" {
			return
		}
	}
	t.Fatalf("All lists no proc at /proc: %+v", all)
}

func TestFindFUSE(t *testing.T) {
	if m, ok := FindFUSE("/proc"); ok {
		t.Errorf("FindFUSE(/proc) = %+v: proc is not FUSE", m)
	}
}

// mangle escapes a path as the kernel does in /proc/self/mountinfo
// (fs/proc_namespace.c: space, tab, newline and backslash as \ooo).
func mangle(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; strings.IndexByte(" \t\n\\", c) >= 0 {
			fmt.Fprintf(&b, `\%03o`, c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzParse reads arbitrary mountinfo lines without panicking, and finds
// any mount point and source the kernel can print, with its device number,
// exactly as they were mounted.
func FuzzParse(f *testing.F) {
	f.Add(`612 29 0:93 / /tmp/a\040b rw,nosuid shared:321 - fuse.volfs volfs rw,user_id=0`, "/mnt/a b\\c\n", "vg0", uint32(0), uint32(93))
	f.Add(`1 2 x / / rw - `, "/\\1234", "", uint32(1<<31), uint32(0))
	f.Fuzz(func(t *testing.T, line, dir, source string, major, minor uint32) {
		_, _ = parse(line)
		_ = Unescape(line)
		if dir == "" || source == "" || strings.IndexByte(dir+source, 0) >= 0 {
			return
		}
		l := fmt.Sprintf("612 29 %d:%d / %s rw,nosuid shared:1 - fuse.volfs %s rw,user_id=0", major, minor, mangle(dir), mangle(source))
		want := Mount{Dir: dir, FSType: "fuse.volfs", Source: source, Major: major, Minor: minor}
		if m, ok := parse(l); !ok || m != want {
			t.Fatalf("parse(%q) = %+v %v, want %+v", l, m, ok, want)
		}
	})
}
