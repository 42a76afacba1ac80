package main

import (
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/lock"
	"github.com/volfs/volfs/internal/proc"
)

// Untagged mounts take a VG exclusively; tagged mounts share it and take
// VG+tag exclusively.
func TestLockVG(t *testing.T) {
	dir := t.TempDir()
	self, err := proc.Self()
	if err != nil {
		t.Fatal(err)
	}
	h := func(m string) lock.Holder { return lock.Holder{Mount: m, Proc: self} }
	release := func(ls []*lock.Lock) {
		for _, l := range ls {
			l.Close()
		}
	}
	all, err := lockVG(dir, "vg0", "", h("/mnt/all"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ vg, tag, want string }{
		{"vg0", "", "volume group vg0 is served by the volfs mount at /mnt/all (pid"},
		{"vg0", "web", "volume group vg0 is served by the volfs mount at /mnt/all (pid"},
	} {
		if _, err := lockVG(dir, c.vg, c.tag, h("/mnt/2")); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("lockVG(%s, %q) while /mnt/all has it: %v, want %q", c.vg, c.tag, err, c.want)
		}
	}
	other, err := lockVG(dir, "vg1", "", h("/mnt/vg1"))
	if err != nil {
		t.Fatalf("another VG: %v", err)
	}
	release(other)
	release(all)

	web, err := lockVG(dir, "vg0", "web", h("/mnt/web"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := lockVG(dir, "vg0", "db", h("/mnt/db"))
	if err != nil {
		t.Fatalf("a second tag of one VG: %v", err)
	}
	if _, err := lockVG(dir, "vg0", "web", h("/mnt/2")); err == nil || !strings.Contains(err.Error(), "vg0 with tag web is served by the volfs mount at /mnt/web (pid") {
		t.Errorf("the same VG and tag twice: %v", err)
	}
	_, err = lockVG(dir, "vg0", "", h("/mnt/2"))
	if err == nil || !strings.Contains(err.Error(), "/mnt/web (pid") || !strings.Contains(err.Error(), "/mnt/db (pid") {
		t.Errorf("untagged while tagged mounts serve the VG: %v, want both named", err)
	}
	release(web)
	release(db)
	if ls, err := lockVG(dir, "vg0", "", h("/mnt/all")); err != nil {
		t.Errorf("untagged after the tagged mounts left: %v", err)
	} else {
		release(ls)
	}
}
