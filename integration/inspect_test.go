package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
)

// volfsJSON runs volfs with args and decodes its standard output.
func volfsJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out, err := exec.Command(volfsBin, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("volfs %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("volfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// holdOpen starts a process that holds path open (as fd 3) until the test
// ends; the test's own copy of the fd is closed.
func holdOpen(t testing.TB, path string) int {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "300")
	cmd.ExtraFiles = []*os.File{f}
	err = cmd.Start()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

// freePort is a TCP port nobody listens on right now.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// scrape reads a Prometheus text exposition: value by "name{labels}".
func scrape(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// TestLsStatusMetrics mounts a device with --metrics, holds its file open
// from another process, does I/O with dd, and checks what volfs ls, volfs
// status and a scrape of the metrics say, through both transports.
func TestLsStatusMetrics(t *testing.T) {
	testutil.Need(t, "dd", "sleep")
	for _, c := range []struct {
		name      string
		flags     []string
		transport string
	}{
		{"io_uring", nil, "io_uring"},
		{"dev-fuse", []string{"--io-uring=false"}, "/dev/fuse"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.transport == "io_uring" && !kernelHasFUSEURing() {
				t.Skip("this kernel has no FUSE over io_uring (/sys/module/fuse/parameters/enable_uring)")
			}
			addr := freePort(t)
			m, dev := setup(t, 64<<20, append([]string{"--metrics", addr}, c.flags...)...)
			f := m.path(dev)
			name := strings.TrimPrefix(f, m.dir+"/")
			before := scrape(t, addr)
			holder := holdOpen(t, f)

			// I/O through the mount: 8 MiB written and read back,
			// aligned and direct (the ring's own device path), then
			// unaligned (go-fuse's path).
			sh(t, "dd", "if=/dev/urandom", "of="+f, "bs=1M", "count=8", "oflag=direct", "conv=notrunc", "status=none")
			sh(t, "dd", "if="+f, "of=/dev/null", "bs=1M", "count=8", "iflag=direct", "status=none")
			sh(t, "dd", "if="+f, "of=/dev/null", "bs=1000", "count=10", "skip=3", "status=none")

			var l struct {
				Mount string `json:"mount"`
				Files []struct {
					Name    string `json:"name"`
					Size    int64  `json:"size"`
					Used    int64  `json:"used"`
					Kind    string `json:"kind"`
					Path    string `json:"path"`
					Handles int    `json:"handles"`
					Holders []struct {
						PID     int    `json:"pid"`
						Command string `json:"command"`
					} `json:"holders"`
				} `json:"files"`
				Total struct {
					Files int   `json:"files"`
					Size  int64 `json:"size"`
				} `json:"total"`
				HoldersComplete bool `json:"holders_complete"`
			}
			volfsJSON(t, &l, "ls", "--json", m.dir)
			if l.Mount != m.dir || len(l.Files) != 1 || l.Total.Files != 1 || l.Total.Size != 64<<20 {
				t.Fatalf("ls --json: %+v", l)
			}
			if !l.HoldersComplete {
				t.Log("ls: the /proc scan was incomplete (a process on this machine is wedged)")
			}
			fi := l.Files[0]
			if fi.Name != name || fi.Size != 64<<20 || fi.Used != 64<<20 || fi.Kind != "device" || fi.Path != dev || fi.Handles != 1 {
				t.Errorf("ls --json file: %+v", fi)
			}
			if len(fi.Holders) != 1 || fi.Holders[0].PID != holder || fi.Holders[0].Command != "sleep" {
				t.Errorf("ls --json holders: %+v, want sleep (pid %d)", fi.Holders, holder)
			}
			out, code := volfsRun(t, "ls", m.dir)
			if code != 0 || !strings.Contains(out, name) || !strings.Contains(out, "64 MiB") ||
				!strings.Contains(out, fmt.Sprintf("sleep (%d)", holder)) || !strings.Contains(out, "1 file, 64 MiB") {
				t.Errorf("volfs ls (exit %d):\n%s", code, out)
			}

			var st struct {
				PID          int                        `json:"pid"`
				Transport    string                     `json:"transport"`
				Source       string                     `json:"source"`
				Uptime       float64                    `json:"uptime_seconds"`
				Requests     uint64                     `json:"requests"`
				ReadBytes    uint64                     `json:"read_bytes"`
				WrittenBytes uint64                     `json:"written_bytes"`
				OpenFiles    int                        `json:"open_files"`
				OpenHandles  int                        `json:"open_handles"`
				Ops          map[string]json.RawMessage `json:"ops"`
				Warnings     []string                   `json:"warnings"`
			}
			volfsJSON(t, &st, "status", "--json", m.dir)
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.PID)); err != nil || !strings.Contains(string(b), m.dir) {
				t.Errorf("status pid %d is not the server of %s (%q, %v)", st.PID, m.dir, b, err)
			}
			if st.Transport != c.transport || st.Source != dev || st.OpenFiles != 1 || st.OpenHandles != 1 ||
				st.WrittenBytes < 8<<20 || st.ReadBytes < 8<<20+10000 || st.Requests == 0 || st.Ops["write"] == nil ||
				st.Warnings == nil || len(st.Warnings) != 0 || st.Uptime <= 0 {
				t.Errorf("status --json: %+v", st)
			}
			t.Logf("volfs ls:\n%s", out)
			out, code = volfsRun(t, "status", m.dir)
			t.Logf("volfs status:\n%s", out)
			if code != 0 || !strings.Contains(out, "transport: "+c.transport) || !strings.Contains(out, "open:      1 file, 1 handle") {
				t.Errorf("volfs status (exit %d):\n%s", code, out)
			}

			after := scrape(t, addr)
			for _, k := range []string{"volfs_written_bytes_total", "volfs_read_bytes_total",
				`volfs_requests_total{op="write"}`, `volfs_requests_total{op="read"}`,
				`volfs_request_duration_seconds_count{op="write"}`, `volfs_request_duration_seconds_count{op="open"}`} {
				if after[k] <= before[k] {
					t.Errorf("%s did not move: %v before, %v after", k, before[k], after[k])
				}
			}
			if d := after["volfs_written_bytes_total"] - before["volfs_written_bytes_total"]; d < 8<<20 {
				t.Errorf("volfs_written_bytes_total grew by %v, want at least 8 MiB", d)
			}
			if after["volfs_open_handles"] != 1 || after[`volfs_errors_total{op="write"}`] != 0 {
				t.Errorf("open handles %v, write errors %v", after["volfs_open_handles"], after[`volfs_errors_total{op="write"}`])
			}
			info := fmt.Sprintf(`volfs_info{mountpoint=%q,source=%q,transport=%q,version=`, m.dir, dev, c.transport)
			found := false
			for k, v := range after {
				found = found || strings.HasPrefix(k, info) && v == 1
			}
			if !found {
				t.Errorf("no %s...} 1 in the metrics", info)
			}
		})
	}
}

// TestLsStatusErrors: what ls and status say when they cannot work.
func TestLsStatusErrors(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	for _, args := range [][]string{{"ls", dir}, {"status", dir}} {
		if out, code := volfsRun(t, args...); code != 1 || !strings.Contains(out, "is not mounted") {
			t.Errorf("volfs %s on a plain directory: exit %d: %s", strings.Join(args, " "), code, out)
		}
	}
	if out, code := volfsRun(t, "status", "--warn-fill", "150", dir); code != 2 {
		t.Errorf("volfs status --warn-fill 150: exit %d: %s", code, out)
	}
	if out, code := volfsRun(t, "ls"); code != 2 {
		t.Errorf("volfs ls without a mount point: exit %d: %s", code, out)
	}
	testutil.Need(t, "setpriv")
	m, _ := setup(t, 16<<20)
	out, err := asNobody(volfsBin + " ls " + m.dir)
	if err == nil || !strings.Contains(out, "must run as root") {
		t.Errorf("volfs ls as nobody: %v: %s", err, out)
	}
	// The server is unharmed and still answers root.
	var l map[string]any
	volfsJSON(t, &l, "ls", "--json", m.dir)
}

// TestUmountProgressOnTerminal: volfs umount waiting for a server that is
// slow to exit says so on a terminal (and only there).
func TestUmountProgressOnTerminal(t *testing.T) {
	testutil.Need(t, "script")
	m, _ := setup(t, 16<<20)
	pid := 0
	for _, p := range mustGlob(t, "/proc/[0-9]*/cmdline") {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "--foreground") && strings.Contains(string(b), m.dir) {
			pid, _ = strconv.Atoi(strings.Split(p, "/")[2])
		}
	}
	if pid == 0 {
		t.Fatal("no server process found")
	}
	// A stopped server cannot exit: umount unmounts, then waits.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(2 * time.Second)
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}()
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	got, err := exec.Command("script", "-qec", volfsBin+" umount "+m.dir, "/dev/null").CombinedOutput()
	if err != nil {
		t.Fatalf("volfs umount on a terminal: %v\n%q", err, got)
	}
	if !strings.Contains(string(got), fmt.Sprintf("waiting for the server (pid %d)", pid)) {
		t.Errorf("volfs umount on a terminal printed %q, want the wait shown", got)
	}
}

func mustGlob(t testing.TB, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
