package lvm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volfs/volfs/integration/vm"
	"github.com/volfs/volfs/internal/testutil"
)

// volfsBin is the binary under test (VOLFS_BIN).
var volfsBin string

// skipReason is why every test skips ("" when they run).
var skipReason string

// tmpRoot holds every mount point, log and data file of the run, so the
// leak checks can tell ours from the machine's.
var tmpRoot string

// vgPrefix starts the name of every VG the tests create.
const vgPrefix = "volfsit"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	switch {
	case !vm.InGuest():
		skipReason = fmt.Sprintf("needs LVM in the volfs QEMU guest (%s=1 and %q on the kernel command line); run "+
			"`make vmtest`, or: make build && go test -exec \"$PWD/integration/vm/vmrun.sh -D 4G -e VOLFS_BIN=$PWD/bin/volfs --\" ./integration/lvm/",
			vm.EnvVar, vm.CmdlineMarker)
	case os.Getenv("VOLFS_BIN") == "":
		skipReason = "VOLFS_BIN is not set: build volfs on the host (make build) and pass it into the guest with " +
			"vmrun.sh -e VOLFS_BIN=$PWD/bin/volfs (make vmtest does)"
	}
	if skipReason != "" {
		return m.Run()
	}
	var err error
	if volfsBin, err = filepath.Abs(os.Getenv("VOLFS_BIN")); err == nil {
		_, err = os.Stat(volfsBin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "VOLFS_BIN: %v\n", err)
		return 1
	}
	// The guest loads dm, fuse and loop; the file system tests need ext4.
	_ = exec.Command("modprobe", "-q", "ext4").Run()
	if tmpRoot, err = os.MkdirTemp("", "volfs-lvm-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmpRoot)

	fds := testutil.OpenFds()
	code := m.Run()
	// A test that leaves a mount, a loop device, a VG or an fd behind
	// fails the run.
	if leaked := testutil.OpenFds() - fds; leaked > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests leaked %d file descriptors\n", leaked)
		code = 1
	}
	if mounts := testutil.MountsUnder(tmpRoot); len(mounts) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: mounts left behind: %s\n", strings.Join(mounts, ", "))
		code = 1
	}
	if loops := leakedLoops(); len(loops) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: loop devices left behind: %s\n", strings.Join(loops, ", "))
		code = 1
	}
	if vgs := leakedVGs(); len(vgs) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: volume groups left behind: %s\n", strings.Join(vgs, ", "))
		code = 1
	}
	return code
}

// leakedLoops lists loop devices over files of the run (images in volfs
// mounts included).
func leakedLoops() []string {
	var out []string
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(string(b), tmpRoot) {
			out = append(out, "/dev/"+strings.Split(f, "/")[3]+" ("+strings.TrimSpace(string(b))+")")
		}
	}
	return out
}

func leakedVGs() []string {
	out, _ := exec.Command("vgs", "--noheadings", "-o", "vg_name").Output()
	var vgs []string
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, vgPrefix) {
			vgs = append(vgs, f)
		}
	}
	return vgs
}
