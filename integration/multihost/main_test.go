package multihost

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volfs/volfs/integration/vm"
)

var (
	// skipReason is why every test skips ("" when they run).
	skipReason string
	// volfsBin is the binary under test (VOLFS_BIN).
	volfsBin string
	// hostID is this guest's lvmlockd host_id (VOLFS_HOST_ID: 1 or 2).
	hostID int
	// sync meets the other guest (VOLFS_SYNC_DIR).
	sync Sync
	// tmpRoot holds the mount points and server logs of the run.
	tmpRoot string
)

const runHint = "run scripts/multihost-test.sh (make multihost-test): it boots two guests sharing one disk"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	id, _ := strconv.Atoi(os.Getenv("VOLFS_HOST_ID"))
	switch {
	case !vm.InGuest():
		skipReason = fmt.Sprintf("needs two volfs QEMU guests sharing a disk (%s=1 and %q on the kernel command line); %s",
			vm.EnvVar, vm.CmdlineMarker, runHint)
	case os.Getenv("VOLFS_BIN") == "":
		skipReason = "VOLFS_BIN is not set; " + runHint
	case id != 1 && id != 2:
		skipReason = "VOLFS_HOST_ID is not 1 or 2; " + runHint
	case os.Getenv("VOLFS_SYNC_DIR") == "":
		skipReason = "VOLFS_SYNC_DIR (a directory both guests share) is not set; " + runHint
	}
	if skipReason != "" {
		return m.Run()
	}
	for _, tool := range []string{"sanlock", "lvmlockd", "lvmlockctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "%s not found: install sanlock and lvm2-lockd on the host (integration/vm/install-deps.sh); "+
				"the guest runs the host's binaries\n", tool)
			return 1
		}
	}
	hostID = id
	self, peer := "host"+strconv.Itoa(id), "host"+strconv.Itoa(3-id)
	sync = Sync{Dir: os.Getenv("VOLFS_SYNC_DIR"), Self: self, Peer: peer}
	var err error
	if volfsBin, err = filepath.Abs(os.Getenv("VOLFS_BIN")); err == nil {
		_, err = os.Stat(volfsBin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "VOLFS_BIN: %v\n", err)
		sync.Fail(err.Error())
		return 1
	}
	if tmpRoot, err = os.MkdirTemp("", "volfs-multihost-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmpRoot)
	if err := startLocking(id); err != nil {
		fmt.Fprintf(os.Stderr, "starting sanlock and lvmlockd: %v\n", err)
		sync.Fail(err.Error())
		return 1
	}
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "removing the shared VG: %v\n", err)
		sync.Fail(err.Error())
		if code == 0 {
			code = 1
		}
	}
	return code
}

// vgMade is set once this host has the shared VG (ensureVG).
var vgMade bool

// ensureVG makes the shared VG on the scratch disk (host 1) or waits until
// host 1 has (host 2), once per run; each host's first mount starts its
// lockspace. teardown removes it after the last test.
func ensureVG(t *testing.T) {
	t.Helper()
	disk := vm.RequireScratchDisks(t, 1)[0]
	if vgMade {
		return
	}
	if hostID == 1 {
		timed(t, "vgcreate", "--shared", vg, disk)
		signal(t, "vg-created")
	} else {
		wait(t, "vg-created", longWait)
	}
	vgMade = true
}

// teardown stops host 2's lockspace and then removes the VG on host 1 (the
// disk image is deleted anyway; this checks that nothing stays locked).
// sanlock sees the other host leave its lockspace some time after it did
// ("Lockspace ... not stopped on other hosts" meanwhile): vgremove retries.
func teardown() error {
	if !vgMade {
		return nil
	}
	if hostID == 2 {
		out, err := exec.Command("vgchange", "--lock-stop", vg).CombinedOutput()
		if err != nil {
			return fmt.Errorf("vgchange --lock-stop %s: %v: %s", vg, err, out)
		}
		return sync.Signal("h2-lock-stopped")
	}
	if _, err := sync.Wait("h2-lock-stopped", longWait); err != nil {
		return err
	}
	start := time.Now()
	for attempt := 1; ; attempt++ {
		out, err := exec.Command("vgremove", "-y", "-ff", vg).CombinedOutput()
		if err == nil {
			fmt.Printf("TIMING vgremove after host 2's lock-stop: %v (%d attempts)\n", time.Since(start).Round(time.Second), attempt)
			return nil
		}
		if time.Since(start) > 5*time.Minute {
			return fmt.Errorf("vgremove %s: %v: %s", vg, err, out)
		}
		fmt.Printf("vgremove attempt %d: %v: %s\n", attempt, err, bytes.TrimSpace(out))
		time.Sleep(15 * time.Second)
	}
}

// startLocking turns this guest into an lvmlockd host: use_lvmlockd and
// its host_id in lvmlocal.conf (the guest's /etc is a tmpfs overlay), then
// sanlock (without a watchdog: -w 0) and lvmlockd, which daemonize.
func startLocking(id int) error {
	const conf = "/etc/lvm/lvmlocal.conf"
	b, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	s := string(b)
	if !strings.Contains(s, "use_lvmpolld = 0") {
		return fmt.Errorf("%s has no global section written by guest-setup.sh:\n%s", conf, s)
	}
	s = strings.Replace(s, "use_lvmpolld = 0", "use_lvmpolld = 0\n    use_lvmlockd = 1", 1)
	s += fmt.Sprintf("local {\n    host_id = %d\n}\n", id)
	if err := os.WriteFile(conf, []byte(s), 0o644); err != nil {
		return err
	}
	for _, d := range []string{"/run/sanlock", "/run/lvm", "/run/lvmlockd"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, c := range [][]string{{"sanlock", "daemon", "-w", "0", "-U", "root", "-G", "root"}, {"lvmlockd"}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	// Both daemonize before their sockets exist.
	deadline := time.Now().Add(time.Minute)
	for {
		out1, err1 := exec.Command("sanlock", "client", "status").CombinedOutput()
		out2, err2 := exec.Command("lvmlockctl", "--info").CombinedOutput()
		if err1 == nil && err2 == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sanlock client status: %v: %s; lvmlockctl --info: %v: %s", err1, out1, err2, out2)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
