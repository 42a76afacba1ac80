package lvm

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
)

// TestScaleConcurrentCreate copies small images into the mount, 8 cp at a
// time, and compares the time with the lvm commands that change the VG
// for them (lvcreate, then lvresize and lvchange at the last close) run
// one after another by lvm alone: lvm serializes on the VG lock, so that
// is as fast as creating the volumes can be. It asserts the data, one
// lvcreate per file and no more changing commands than that sequence (no
// retry storm: lvchanges that the 5 s committer ran for a size reached
// mid-copy aside), no lvs of a new LV alone and at most one read of the
// VG (lvs, vgs) per file; it prints the times and the lvm commands per
// file. Slow in the TCG guest (a few seconds per file on a loaded host),
// so it runs only when VOLFS_SCALE_FILES gives the number of files
// (README "A thousand images").
func TestScaleConcurrentCreate(t *testing.T) {
	const parallel = 8
	files, err := strconv.Atoi(os.Getenv("VOLFS_SCALE_FILES"))
	if err != nil || files <= 0 {
		t.Skip("set VOLFS_SCALE_FILES=N to copy N images in at once (minutes in the guest)")
	}
	e := newVG(t)
	const size = 1*mib + 4321
	src := e.file("src", size, 7)
	want := sha(t, src)
	m := e.mount("--log-level", "debug")

	before := len(m.logText())
	start := time.Now()
	script := fmt.Sprintf("seq 0 %d | xargs -P %d -I{} cp %s %s/c{}", files-1, parallel, src, m.dir)
	if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("parallel cp: %v: %s", err, out)
	}
	took := time.Since(start)
	time.Sleep(3 * time.Second) // the log lines of refreshes still running
	cmds := map[string]int{}
	changing, midCopy, oneLV := 0, 0, 0
	re := regexp.MustCompile(` cmd="?(\w+) `)
	final := fmt.Sprintf("--addtag volfs.size=%d ", size)
	for _, line := range strings.Split(m.logText()[before:], "\n") {
		sm := re.FindStringSubmatch(line)
		if !strings.Contains(line, " msg=lvm ") || sm == nil {
			continue
		}
		cmds[sm[1]]++
		switch {
		case sm[1] == "lvchange" && strings.Contains(line, "--addtag volfs.size=") && !strings.Contains(line, final):
			midCopy++ // the committer saved a size reached mid-copy
		case sm[1] == "lvs" && strings.Contains(line, " "+e.vg+"/"):
			oneLV++
		case sm[1] != "lvs" && sm[1] != "vgs":
			changing++
		}
	}
	total := 0
	for _, n := range cmds {
		total += n
	}
	reads := cmds["lvs"] + cmds["vgs"]
	t.Logf("%d files copied in, %d cp at a time: %v; lvm commands %v (%.1f per file, %.2f reads per file; "+
		"%d lvchange of a size reached mid-copy)", files, parallel, took.Round(time.Millisecond), cmds,
		float64(total)/float64(files), float64(reads)/float64(files), midCopy)
	for i := range files {
		if got := sha(t, m.path(fmt.Sprintf("c%d", i))); got != want {
			t.Fatalf("c%d: sha256 %s, want %s", i, got, want)
		}
	}
	if cmds["lvcreate"] != files {
		t.Errorf("%d lvcreate for %d files, want one each", cmds["lvcreate"], files)
	}
	if changing > 3*files {
		t.Errorf("%d lvm commands changed the VG for %d files (%v), want at most 3 per file", changing, files, cmds)
	}
	if oneLV > 0 {
		t.Errorf("%d lvs of one LV for %d new files: a create reads its new LV with lvs again", oneLV, files)
	}
	if reads > files {
		t.Errorf("%d lvm reads (lvs, vgs) for %d files, want at most one per file", reads, files)
	}
	if retries := strings.Count(m.logText()[before:], "retrying"); retries > 0 {
		t.Errorf("the server retried lvm commands %d times", retries)
	}
	m.umount()

	// The same changes, by lvm alone, one after another.
	start = time.Now()
	for i := range files {
		lv := fmt.Sprintf("%s/b%d", e.vg, i)
		sh(t, "lvcreate", "-q", "-Wy", "-Zy", "-L", "64m", "-n", fmt.Sprintf("b%d", i), "--addtag", "a", e.vg)
		sh(t, "lvresize", "-q", "-f", "-L", "4m", lv)
		sh(t, "lvchange", "-q", "--addtag", "b", lv)
	}
	base := time.Since(start)
	t.Logf("the same %d lvcreate, lvresize and lvchange by lvm alone, one after another: %v; volfs / lvm alone: %.2f (volfs ran %d)",
		files, base.Round(time.Millisecond), float64(took)/float64(base), changing+midCopy)
	testutil.Bench(t, "guest", "create_files", files, "create_s", took, "create_lvm_s", base,
		"create_lvm_per_file", float64(total)/float64(files), "create_reads_per_file", float64(reads)/float64(files))
}
