package lvm

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestNames(t *testing.T) {
	e := newVG(t)
	m := e.mount()
	// File names that are not valid LV names are stored escaped,
	// reversibly: LVM refuses "snapshot1" as an LV name.
	if out, err := try("lvcreate", "-q", "-L", "4m", "-n", "snapshot1", e.vg); err == nil {
		t.Fatalf("lvcreate -n snapshot1 worked: the test's premise is wrong\n%s", out)
	}
	escaped := map[string]string{
		"web disk:1": "web+20disk+3A1",
		"snapshot1":  "+73napshot1",
		"x_tmeta":    "x+5Ftmeta",
		"ü.img":      "+C3+BC.img",
		"plain-name": "plain-name",
	}
	for file := range escaped {
		if err := os.WriteFile(m.path(file), []byte("data of "+file), 0o644); err != nil {
			t.Fatalf("create %q: %v", file, err)
		}
	}
	check := func() {
		t.Helper()
		for file, lvName := range escaped {
			e.wantFileLV(lvName, int64(len("data of "+file)))
			if b, err := os.ReadFile(m.path(file)); err != nil || string(b) != "data of "+file {
				t.Fatalf("read %q: %q, %v", file, b, err)
			}
		}
		if got := m.names(); !equal(got, []string{"plain-name", "snapshot1", "web disk:1", "x_tmeta", "ü.img"}) {
			t.Fatalf("listing: %q", got)
		}
	}
	check()
	m.remount()
	check()

	// mv to and from escaped names.
	sh(t, "mv", m.path("web disk:1"), m.path("db disk"))
	sh(t, "mv", m.path("plain-name"), m.path("snapshot2"))
	lvs, _ := e.lvs()
	for _, n := range []string{"db+20disk", "+73napshot2"} {
		if _, ok := lvs[n]; !ok {
			t.Fatalf("no LV %s after mv: %v", n, names(lvs))
		}
	}
	delete(escaped, "web disk:1")
	delete(escaped, "plain-name")

	// Too long for LVM (VG and LV name together at most 125 characters,
	// escapes count): ENAMETOOLONG, nothing created.
	before := e.files()
	for _, name := range []string{
		strings.Repeat("n", 126-len(e.vg)),
		strings.Repeat(" ", 42), // 126 characters escaped
	} {
		_, err := os.OpenFile(m.path(name), os.O_CREATE|os.O_WRONLY, 0o644)
		if !errors.Is(err, syscall.ENAMETOOLONG) {
			t.Fatalf("create of a %d-byte name: %v, want ENAMETOOLONG", len(name), err)
		}
		if err := os.Rename(m.path("db disk"), m.path(name)); !errors.Is(err, syscall.ENAMETOOLONG) {
			t.Fatalf("mv to a %d-byte name: %v, want ENAMETOOLONG", len(name), err)
		}
	}
	// The longest name that fits works.
	longest := strings.Repeat("n", 125-len(e.vg)-1)
	sh(t, "touch", m.path(longest))
	e.wantFileLV(longest, 0)
	if after := e.files(); len(after) != len(before)+1 {
		t.Fatalf("LVs: %v, before %v", after, before)
	}
	out, err := try("touch", m.path(longest+"n"))
	if err == nil || !strings.Contains(out, "File name too long") {
		t.Fatalf("touch of a name one too long: %v: %s", err, out)
	}
	if !strings.Contains(m.logText(), "lvm2 accepts 125") {
		t.Errorf("the server log does not say why the name is refused:\n%s", m.logText())
	}
}
