package lvm_test

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
	"github.com/volfs/volfs/volmap/lvm"
)

// TestSnapshotDriver: snapshots carry every tag and are not files; a
// rollback that fails at either step leaves the image as it was; rollback
// keeps the identity; a clone is a file of its own.
func TestSnapshotDriver(t *testing.T) {
	e := newEnv(t)
	e.sh("lvcreate", "-q", "--type", "thin-pool", "-L", "64m", "-n", "pool", e.vg)
	d := e.driver(lvm.Config{ThinPool: "pool"})
	ctx := context.Background()
	a := meta.Attrs{ID: "img-identity", Mode: 0o640, Size: -1}
	if _, err := d.Create(ctx, "img", 8*mib, a); err != nil {
		t.Fatal(err)
	}
	old := pattern(mib)
	writeAt(t, d, "img", old, 0)
	s, err := d.CreateSnapshot(ctx, "img", "s/1", a)
	if !errors.Is(err, volmap.ErrInvalidName) {
		t.Fatalf("snapshot name with '/': %v", err)
	}
	if s, err = d.CreateSnapshot(ctx, "img", "s1", a); err != nil {
		t.Fatal(err)
	}
	if s.Origin != "img-identity" || s.Attrs.Mode != 0o640 || s.Attrs.ID != "" || s.Size != 8*mib {
		t.Fatalf("snapshot %+v", s)
	}
	vols, _ := d.List(ctx)
	if len(vols) != 1 {
		t.Fatalf("files after a snapshot: %+v", vols)
	}
	if _, err := d.CreateSnapshot(ctx, "img", "s1", a); !errors.Is(err, volmap.ErrExists) {
		t.Fatalf("same snapshot name twice: %v", err)
	}
	writeAt(t, d, "img", bytes.Repeat([]byte{7}, mib), 0)
	before := e.lvs()["img"]

	for _, step := range []int{2, 3} {
		lvm.SetRollbackFault(func(s int) error {
			if s == step {
				return errors.New("injected failure")
			}
			return nil
		})
		err := d.Rollback(ctx, "img", "s1", a)
		lvm.SetRollbackFault(nil)
		if err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("step %d: Rollback = %v", step, err)
		}
		rows := e.lvs()
		if rows["img"].uuid != before.uuid {
			t.Fatalf("step %d: image LV after a failed rollback: %+v (was %+v)", step, rows["img"], before)
		}
		for n := range rows {
			if strings.Contains(n, "rollback") {
				t.Fatalf("step %d: LV %s left", step, n)
			}
		}
		if b := readAt(t, d, "img", mib, 0); !bytes.Equal(b, bytes.Repeat([]byte{7}, mib)) {
			t.Fatalf("step %d: data changed by a failed rollback", step)
		}
	}

	// Refused while another process holds the image's device, naming it.
	holder := exec.Command("sh", "-c", `exec 3<"$1"; echo ok; read -r _`, "sh", "/dev/"+e.vg+"/img")
	stdin, _ := holder.StdinPipe()
	stdout, _ := holder.StdoutPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := stdout.Read(make([]byte, 3)); err != nil {
		t.Fatal(err)
	}
	err = d.Rollback(ctx, "img", "s1", a)
	stdin.Close()
	_ = holder.Wait()
	if !errors.Is(err, volmap.ErrInUse) || !strings.Contains(err.Error(), "(sh)") {
		t.Fatalf("rollback of a held image: %v", err)
	}
	if e.lvs()["img"].uuid != before.uuid {
		t.Fatal("a refused rollback changed the image")
	}

	a.Mode = 0o600
	if err := d.Rollback(ctx, "img", "s1", a); err != nil {
		t.Fatal(err)
	}
	v, err := d.Lookup(ctx, "img")
	if err != nil || v.Identity() != "img-identity" || v.Attrs.Mode != 0o600 || !v.Thin {
		t.Fatalf("after rollback: %+v, %v", v, err)
	}
	if b := readAt(t, d, "img", mib, 0); !bytes.Equal(b, old) {
		t.Fatal("rollback did not bring the snapshot's data back")
	}
	if snaps, err := d.Snapshots(ctx, "img-identity"); err != nil || len(snaps) != 1 {
		t.Fatalf("snapshots after rollback: %+v, %v", snaps, err)
	}

	// Clone of the snapshot: its own file.
	c, err := d.Clone(ctx, "img", "s1", "copy", meta.Attrs{ID: "copy-id", Mode: 0o600, Size: -1})
	if err != nil || c.Identity() != "copy-id" {
		t.Fatalf("Clone = %+v, %v", c, err)
	}
	if b := readAt(t, d, "copy", mib, 0); !bytes.Equal(b, old) {
		t.Fatal("clone data differs")
	}
	if err := d.RenameSnapshot(ctx, "img-identity", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteSnapshot(ctx, "img-identity", "s1"); !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("delete of the old name: %v", err)
	}
	if err := d.DeleteSnapshot(ctx, "img-identity", "s2"); err != nil {
		t.Fatal(err)
	}
	// Linear images: refused, naming --thin-pool.
	e.sh("lvcreate", "-q", "-L", "4m", "-n", "lin", e.vg)
	if _, err := d.CreateSnapshot(ctx, "lin", "x", meta.Attrs{}); !errors.Is(err, volmap.ErrNotSupported) ||
		!strings.Contains(err.Error(), "--thin-pool") {
		t.Fatalf("snapshot of a linear LV: %v", err)
	}
}
