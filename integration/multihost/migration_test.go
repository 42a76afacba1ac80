package multihost

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestLiveMigration is the --live-migration mode: linear images are
// activated shared, so both hosts may have one open at once, as a live
// migration does (the destination opens before the source closes):
//
//  1. host 1 mounts with --live-migration, writes "mig" and keeps it open;
//  2. host 2's plain mount cannot open it (EBUSY: it asks for the lock
//     exclusively); with --live-migration it opens it and reads host 1's
//     data, while truncate, mv and rm stay refused with EBUSY naming host 1,
//     and volfs ls names host 1;
//  3. host 1's truncate is refused too while host 2 has it open (EBUSY
//     naming host 2);
//  4. once both closed it, the LV is inactive on both hosts and a truncate
//     on host 1 works.
func TestLiveMigration(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	ensureVG(t)
	onHosts(t, migrationHost1, migrationHost2)
}

const migFile = "mig"

func migrationHost1(t *testing.T) {
	m := mountVG(t, "--live-migration")
	m.logHas(t, "live_migration=true")
	if err := os.WriteFile(m.path(migFile), pattern(fileSize, 3), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.path(migFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !active(t, migFile) {
		t.Errorf("%s is open but its LV is not active on this host", migFile)
	}
	// lvs says "active exclusively" for any active LV of a shared VG;
	// lvmlockd knows the mode ("LK LV sh UUID").
	uuid := lvField(t, migFile, "lv_uuid")
	out, err := exec.Command("lvmlockctl", "--info").CombinedOutput()
	if err != nil {
		t.Fatalf("lvmlockctl --info: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "LK LV sh "+uuid) {
		t.Errorf("lvmlockctl --info with %s (%s) open under --live-migration: no shared lock:\n%s", migFile, uuid, out)
	}
	signal(t, "mig-held")

	// 3. host 2 has it open as well
	wait(t, "h2-mig-open", longWait)
	err = os.Truncate(m.path(migFile), 2*fileSize)
	if !errors.Is(err, syscall.EBUSY) {
		t.Errorf("truncate on host 1 while host 2 has the file open: %v, want EBUSY", err)
	}
	m.logHas(t, "host 2")
	signal(t, "h1-mig-checked")

	// 4. both closed
	wait(t, "h2-mig-closed", longWait)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "mig's LV inactive here after the last close", quick, func() bool { return !active(t, migFile) })
	if err := os.Truncate(m.path(migFile), 2*fileSize); err != nil {
		t.Errorf("truncate on host 1 once no host has the file open: %v", err)
	}
	if err := os.Remove(m.path(migFile)); err != nil {
		t.Errorf("rm on host 1 once no host has the file open: %v", err)
	}
	m.umount(t)
}

func migrationHost2(t *testing.T) {
	wait(t, "mig-held", longWait)

	// 2a. without --live-migration: the open asks for the lock exclusively
	plain := mountVG(t)
	waitFor(t, "mig listed", quick, func() bool { return slices.Contains(plain.names(t), migFile) })
	if f, err := os.OpenFile(plain.path(migFile), os.O_RDWR, 0); err == nil {
		f.Close()
		t.Errorf("a mount without --live-migration opened a file that host 1 has open shared")
	} else if !errors.Is(err, syscall.EBUSY) {
		t.Errorf("open without --live-migration while host 1 has it open: %v, want EBUSY", err)
	}
	plain.logHas(t, "host 1")
	plain.umount(t)

	// 2b. with it: both hosts have it open
	m := mountVG(t, "--live-migration")
	f, err := os.OpenFile(m.path(migFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open with --live-migration while host 1 has the file open shared: %v", err)
	}
	defer f.Close()
	got := make([]byte, fileSize)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Errorf("read on host 2: %v", err)
	} else if !bytes.Equal(got, pattern(fileSize, 3)) {
		t.Errorf("what host 2 reads differs from what host 1 wrote")
	}
	if err := os.Truncate(m.path(migFile), 2*fileSize); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("truncate while host 1 has the file open too: %v, want EBUSY", err)
	}
	if err := os.Rename(m.path(migFile), m.path(migFile+"-moved")); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("mv while host 1 has the file open too: %v, want EBUSY", err)
		if err == nil {
			_ = os.Rename(m.path(migFile+"-moved"), m.path(migFile))
		}
	}
	if err := os.Remove(m.path(migFile)); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("rm while host 1 has the file open too: %v, want EBUSY", err)
	}
	m.logHas(t, "is active on host 1")
	if by := m.activeOn(t, migFile); by != "host 1" {
		t.Errorf("volfs ls on host 2: %s active on %q, want \"host 1\"", migFile, by)
	}
	if st, err := os.Stat(m.path(migFile)); err != nil || st.Size() != fileSize {
		t.Errorf("after the refused truncate: %v, %v; want %d bytes", st, err, fileSize)
	}
	signal(t, "h2-mig-open")

	wait(t, "h1-mig-checked", longWait)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "mig's LV inactive on host 2 after its last close", quick, func() bool { return !active(t, migFile) })
	m.umount(t)
	signal(t, "h2-mig-closed")
}
