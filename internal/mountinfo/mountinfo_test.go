package mountinfo

import "testing"

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
