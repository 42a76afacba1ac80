package lvm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volfs/volfs/integration/vm"
	"github.com/volfs/volfs/internal/testutil"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	// extent is the VGs' extent size (vgcreate's default).
	extent = 4 * mib
)

var vgSeq atomic.Int32

// env is one test's volume group on the scratch disk.
type env struct {
	t     *testing.T
	vg    string
	disk  string   // the first PV
	disks []string // every PV of the VG
	base  string   // the test's directory under tmpRoot
}

// newVG creates a VG on the first scratch disk; it is removed with its LVs
// and the disk's PV label when the test ends (after the test's mounts and
// holders, which are registered later and so cleaned up first).
func newVG(t *testing.T) *env {
	t.Helper()
	return newVGOn(t, 1)
}

// newVGOn is newVG over the first n scratch disks, one PV each (RAID and
// striped layouts put each image on its own PV).
func newVGOn(t *testing.T, n int) *env {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	disks := vm.RequireScratchDisks(t, n)
	base, err := os.MkdirTemp(tmpRoot, "t-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, vg: fmt.Sprintf("%s%d", vgPrefix, vgSeq.Add(1)), disk: disks[0], disks: disks, base: base}
	t.Cleanup(e.cleanup)
	sh(t, "pvcreate", append([]string{"-q", "-ff", "--yes"}, disks...)...)
	sh(t, "vgcreate", append([]string{"-q", "-s", strconv.Itoa(extent/kib) + "k", e.vg}, disks...)...)
	return e
}

func (e *env) cleanup() {
	// Loop devices over files of this test (a test that failed half way).
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(string(b), e.base) {
			_, _ = try("losetup", "-d", "/dev/"+strings.Split(f, "/")[3])
		}
	}
	if out, err := try("vgremove", "-q", "-ff", "--yes", e.vg); err != nil {
		e.t.Errorf("cleanup: vgremove %s: %v\n%s", e.vg, err, out)
	}
	for _, d := range e.disks {
		if out, err := try("pvremove", "-q", "-ff", "--yes", d); err != nil {
			e.t.Errorf("cleanup: pvremove %s: %v\n%s", d, err, out)
		}
		_, _ = try("wipefs", "-q", "-a", d)
	}
	os.RemoveAll(e.base)
}

// thinPool creates a thin pool in the VG. --errorwhenfull: a write to a
// full pool fails at once instead of being queued for 60 s.
func (e *env) thinPool(name, size string) {
	e.t.Helper()
	sh(e.t, "lvcreate", "-q", "--type", "thin-pool", "-L", size, "-n", name, e.vg)
	sh(e.t, "lvchange", "-q", "--errorwhenfull", "y", e.vg+"/"+name)
}

// file makes a data file of size bytes outside the mount (the same
// pseudo-random bytes for a given seed).
func (e *env) file(name string, size int, seed byte) string {
	e.t.Helper()
	p := filepath.Join(e.base, name)
	if err := os.WriteFile(p, pseudoRandom(size, seed), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// mount is one running volfs server (a separate process, started by
// `volfs mount`) over the VG.
type mount struct {
	e    *env
	dir  string
	log  string
	args []string
	env  []string // added to the server's environment (test hooks)
}

// mount mounts the VG with extra flags; it is unmounted when the test ends.
func (e *env) mount(extra ...string) *mount {
	e.t.Helper()
	dir, err := os.MkdirTemp(e.base, "mnt-")
	if err != nil {
		e.t.Fatal(err)
	}
	m := &mount{e: e, dir: dir, log: dir + ".log"}
	m.args = append([]string{"--vg", e.vg, "--log-file", m.log}, extra...)
	m.start()
	e.t.Cleanup(func() {
		if mounted(m.dir) {
			if out, err := exec.Command(volfsBin, "umount", m.dir).CombinedOutput(); err != nil {
				e.t.Errorf("volfs umount %s: %v: %s", m.dir, err, out)
				_ = exec.Command("umount", "-l", m.dir).Run()
			}
		}
		if e.t.Failed() {
			e.t.Logf("server log:\n%s", m.logText())
		}
	})
	return m
}

func (m *mount) start() {
	m.e.t.Helper()
	args := append(append([]string{"mount"}, m.args...), m.dir)
	cmd := exec.Command(volfsBin, args...)
	cmd.Env = append(os.Environ(), m.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		m.e.t.Fatalf("volfs %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (m *mount) umount() {
	m.e.t.Helper()
	if out, err := exec.Command(volfsBin, "umount", m.dir).CombinedOutput(); err != nil {
		m.e.t.Fatalf("volfs umount: %v: %s", err, out)
	}
}

func (m *mount) remount() {
	m.e.t.Helper()
	m.umount()
	m.start()
}

func (m *mount) path(name string) string { return filepath.Join(m.dir, name) }

func (m *mount) logText() string {
	b, _ := os.ReadFile(m.log)
	return string(b)
}

// names lists the mount's directory.
func (m *mount) names() []string {
	m.e.t.Helper()
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		m.e.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func (m *mount) has(name string) bool { return slices.Contains(m.names(), name) }

func mounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// lv is what `lvs --reportformat json` says about an LV.
type lv struct {
	Name        string
	UUID        string
	Size        int64
	Tags        []string
	Attr        string
	SegType     string
	Pool        string
	DataPercent float64 // -1 when not reported
}

// tag returns the value of the volfs tag key ("volfs.size") and whether
// the LV has it.
func (l lv) tag(key string) (string, bool) {
	for _, t := range l.Tags {
		if v, ok := strings.CutPrefix(t, key+"="); ok {
			return v, true
		}
	}
	return "", false
}

func (l lv) hasTag(tag string) bool { return slices.Contains(l.Tags, tag) }

// lvs lists every LV of the VG (hidden ones too, as "[name]") with lvs,
// not with volfs's own parser. warnings is what lvs wrote to stderr.
func (e *env) lvs() (lvs map[string]lv, warnings string) {
	e.t.Helper()
	cmd := exec.Command("lvs", "-a", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "lv_name,lv_uuid,lv_size,lv_tags,lv_attr,segtype,pool_lv,data_percent", e.vg)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("lvs %s: %v\n%s", e.vg, err, stderr.String())
	}
	var rep struct {
		Report []struct {
			LV []map[string]string `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		e.t.Fatalf("lvs json: %v\n%s", err, stdout.String())
	}
	lvs = map[string]lv{}
	for _, r := range rep.Report {
		for _, row := range r.LV {
			l := lv{Name: row["lv_name"], UUID: row["lv_uuid"], Attr: row["lv_attr"], SegType: row["segtype"],
				Pool: row["pool_lv"], DataPercent: -1}
			l.Size, _ = strconv.ParseInt(row["lv_size"], 10, 64)
			if row["lv_tags"] != "" {
				l.Tags = strings.Split(row["lv_tags"], ",")
			}
			if p, err := strconv.ParseFloat(row["data_percent"], 64); err == nil {
				l.DataPercent = p
			}
			lvs[l.Name] = l
		}
	}
	return lvs, stderr.String()
}

// lv returns one LV, failing the test if it does not exist.
func (e *env) lv(name string) lv {
	e.t.Helper()
	lvs, _ := e.lvs()
	l, ok := lvs[name]
	if !ok {
		e.t.Fatalf("no LV %s/%s; LVs: %v", e.vg, name, names(lvs))
	}
	return l
}

// files lists the LVs that are not LVM's internals (pool data, metadata,
// spare).
func (e *env) files() []string {
	e.t.Helper()
	lvs, _ := e.lvs()
	var out []string
	for n, l := range lvs {
		if !strings.HasPrefix(n, "[") && l.SegType != "thin-pool" {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

func names(lvs map[string]lv) []string {
	return slices.Sorted(maps.Keys(lvs))
}

// sh runs a command and fails the test with its output when it fails.
func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := try(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func try(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func sha(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sameData(t testing.TB, a, b string) {
	t.Helper()
	if sa, sb := sha(t, a), sha(t, b); sa != sb {
		t.Fatalf("%s and %s differ", a, b)
	}
}

func size(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not after %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%s after %v", what, time.Since(start).Round(10*time.Millisecond))
}

// holder is a process that keeps a file open until released.
type holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan error
}

// hold starts a process with path open on fd 3. When released it copies
// what it reads through that fd to out (if out is not empty) and exits.
func hold(t *testing.T, path, out string) *holder {
	t.Helper()
	cmd := exec.Command("sh", "-c", `exec 3<"$1"; read -r _; if [ -n "$2" ]; then cat <&3 >"$2"; fi`, "sh", path, out)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	go func() { h.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-h.done
	})
	fd3 := fmt.Sprintf("/proc/%d/fd/3", cmd.Process.Pid)
	waitFor(t, "holder has "+filepath.Base(path)+" open", 10*time.Second, func() bool {
		return testutil.SameFile(fd3, path)
	})
	return h
}

// release lets the holder copy its data out and exit.
func (h *holder) release(t *testing.T) {
	t.Helper()
	_, _ = h.stdin.Write([]byte("\n"))
	h.stdin.Close()
	select {
	case err := <-h.done:
		h.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("holder: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("holder did not exit")
	}
}
