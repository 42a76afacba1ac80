package lvm

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// A SIGKILL of the server at each step of `volfs snapshot rollback`
// (VOLFS_TEST_ROLLBACK_KILL: the server kills itself there) leaves, after
// the next mount, the file with either its data from before the rollback
// or the snapshot's, with its inode number and mode, and no hidden LV or
// intent tag; the next mount's log says what it did, naming the LVs.
func TestRollbackCrash(t *testing.T) {
	e := newVG(t)
	e.thinPool("pool", "512m")
	m := e.mount("--thin-pool", "pool")
	snapData, newData := e.file("snap", 3*mib+777, 1), e.file("new", 5*mib+333, 2)
	for _, tc := range []struct {
		step    int
		outcome string // "old": rollback undone, "rolled": it took effect
		action  string // what the next mount logs (action=...), "" for nothing
	}{
		{1, "old", "drop-tag"},  // intent recorded, image not moved yet
		{2, "old", "undo"},      // image moved aside, no copy of the snapshot
		{3, "rolled", "finish"}, // the copy has the name, old LV still aside
		{4, "rolled", ""},       // done, the answer not sent
	} {
		t.Run("step"+strconv.Itoa(tc.step), func(t *testing.T) {
			img := m.path("img" + strconv.Itoa(tc.step))
			lvName := "img" + strconv.Itoa(tc.step)
			sh(t, "cp", snapData, img)
			if err := os.Chmod(img, 0o640); err != nil {
				t.Fatal(err)
			}
			ino := inoOf(t, img)
			mustVolfs(t, "snapshot", "create", img, "good")
			sh(t, "cp", newData, img)
			oldUUID := e.lv(lvName).UUID

			m.umount()
			m.env = []string{"VOLFS_TEST_ROLLBACK_KILL=" + strconv.Itoa(tc.step)}
			m.start()
			m.env = nil
			pid := m.serverPid()
			logBefore := len(m.logText())
			if out, err := volfs("snapshot", "rollback", img, "good"); err == nil {
				t.Fatalf("rollback answered success from a server killed at step %d: %s", tc.step, out)
			}
			m.crashed(pid)
			m.start()

			got := sha(t, img)
			switch tc.outcome {
			case "old":
				if got != sha(t, newData) {
					t.Fatalf("killed at step %d: the rollback was undone but the file does not have its old data (size %d)", tc.step, size(t, img))
				}
				if u := e.lv(lvName).UUID; u != oldUUID {
					t.Errorf("killed at step %d: the image's LV is %s, want the old one %s back", tc.step, u, oldUUID)
				}
			case "rolled":
				if got != sha(t, snapData) {
					t.Fatalf("killed at step %d: the file does not have the snapshot's data (size %d)", tc.step, size(t, img))
				}
			}
			st, err := os.Stat(img)
			if err != nil || st.Mode().Perm() != 0o640 {
				t.Fatalf("killed at step %d: stat %v, %v", tc.step, st, err)
			}
			if gotIno := inoOf(t, img); gotIno != ino {
				t.Errorf("killed at step %d: inode number %d, was %d", tc.step, gotIno, ino)
			}
			lvs, _ := e.lvs()
			for n, l := range lvs {
				if strings.Contains(n, "volfs-rollback-") {
					t.Errorf("killed at step %d: hidden LV %s left after the next mount (tags %v)", tc.step, n, l.Tags)
				}
				for _, tag := range l.Tags {
					if strings.HasPrefix(tag, "volfs-rollback=") {
						t.Errorf("killed at step %d: LV %s keeps the intent tag %s", tc.step, n, tag)
					}
				}
			}
			logText := m.logText()[logBefore:]
			if tc.action != "" {
				if !strings.Contains(logText, "action="+tc.action) || !strings.Contains(logText, "image_lv="+lvName) {
					t.Errorf("killed at step %d: the next mount's log does not say action=%s for %s:\n%s", tc.step, tc.action, lvName, logText)
				}
			} else if strings.Contains(logText, "interrupted snapshot rollback") {
				t.Errorf("killed after the rollback: the next mount's log reports a recovery:\n%s", logText)
			}
			// The snapshot is still there, and a rollback now works.
			sameData(t, m.path(".snapshots/"+lvName+"/good"), snapData)
			mustVolfs(t, "snapshot", "rollback", img, "good")
			sameData(t, img, snapData)
			if gotIno := inoOf(t, img); gotIno != ino {
				t.Errorf("killed at step %d: inode number %d after a second rollback, was %d", tc.step, gotIno, ino)
			}
		})
	}
}
