package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volfs/volfs/internal/testutil"
)

// volfsBin is the binary under test, built once by TestMain.
var volfsBin string

// tmpRoot holds every mount point and state directory of the run, so the
// leak check can tell our mounts from the machine's.
var tmpRoot string

func TestMain(m *testing.M) {
	if os.Getenv(clientEnv) != "" {
		os.Exit(clientCall(os.Args[1:]))
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	tmpRoot, err = os.MkdirTemp("", "volfs-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmpRoot)
	// Permission tests run clients as nobody, who must reach the mounts.
	if err := os.Chmod(tmpRoot, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	volfsBin = filepath.Join(tmpRoot, "volfs")
	build := []string{"build", "-o", volfsBin}
	race := os.Getenv("VOLFS_TEST_RACE") == "1"
	if race {
		// make racetest: the server under test runs with the race
		// detector (its io_uring queues and request goroutines). It runs
		// detached, so its reports go to files that fail the run.
		build = append(build, "-race")
		os.Setenv("GORACE", "log_path="+filepath.Join(tmpRoot, "race"))
	}
	if out, err := exec.Command("go", append(build, "../cmd/volfs")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building volfs: %v\n%s", err, out)
		return 1
	}
	fds := testutil.OpenFds()
	code := m.Run()
	if leaked := testutil.OpenFds() - fds; leaked > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests leaked %d file descriptors\n", leaked)
		code = 1
	}
	// A test that leaves a mount or a loop device behind fails the run.
	if mounts := testutil.MountsUnder(tmpRoot); len(mounts) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: mounts left behind: %s\n", strings.Join(mounts, ", "))
		code = 1
	}
	if loops := testutil.LeakedLoops(); len(loops) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: loop devices left behind: %s\n", strings.Join(loops, ", "))
		code = 1
	}
	if race {
		reports, _ := filepath.Glob(filepath.Join(tmpRoot, "race.*"))
		for _, r := range reports {
			b, _ := os.ReadFile(r)
			fmt.Fprintf(os.Stderr, "FAIL: data race in the server (%s):\n%s\n", r, b)
			code = 1
		}
	}
	return code
}
