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
