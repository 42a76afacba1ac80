package fs

// The fixture of the in-process lifecycle tests: a volfs mount over a
// loopdir driver (sparse files on loop devices in /dev/shm), served by
// this test process, unmounted when the test ends. As go-fuse's own tests
// do, the test process is also the client; it keeps its I/O light (a few
// MiB at most) and has a child process (cmp) read anything larger, since
// heavy I/O against a mount from the process that serves it can stall the
// Go runtime.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/volfs/volfs/internal/testutil"
	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
	"github.com/volfs/volfs/volmap/loopdir"
)

// testMount is one mounted volfs.
type testMount struct {
	t    *testing.T
	dir  string // the mount point
	d    *loopdir.Driver
	root *Root
	log  *syncBuffer
	// unmount unmounts (once), waits for the server, shuts the root down
	// and closes the driver; the test's cleanup calls it too.
	unmount func()
}

// mountConfig says how to mount.
type mountConfig struct {
	loopdir.Config
	// Zeroer: volfs zeroes through the driver (loopdir.Zeroing) instead of
	// fallocate on the device.
	Zeroer bool
	// IOUring serves through FUSE over io_uring where the kernel has it.
	IOUring bool
	// NoDetacher hides the Detacher capability: a removed open file
	// cannot keep its volume.
	NoDetacher bool
	// BeforeCreate, if set, runs at each Create before the driver takes
	// its lock (a test holds a creation there, as a slow lvcreate would).
	BeforeCreate func(name string)
	// Layouts wraps the driver in layoutDriver (layout_test.go).
	Layouts bool
	// SetAttrs, if set, runs before each SetAttrs of the driver; its
	// error fails it.
	SetAttrs func(a meta.Attrs) error
	// BeforeZero, if set, runs at each Zero of the driver (which then
	// zeroes, as Zeroer): a test holds a zeroing there, as a device that
	// writes its zeros would for minutes.
	BeforeZero func()
}

// hookedSetAttrs is loopdir with a hook before each SetAttrs.
type hookedSetAttrs struct {
	*loopdir.Driver
	before func(a meta.Attrs) error
}

func (h hookedSetAttrs) SetAttrs(ctx context.Context, name string, a meta.Attrs) error {
	if err := h.before(a); err != nil {
		return err
	}
	return h.Driver.SetAttrs(ctx, name, a)
}

// hookedZero is loopdir.Zeroing with a hook before each Zero.
type hookedZero struct {
	loopdir.Zeroing
	before func()
}

func (h hookedZero) Zero(ctx context.Context, name string, f *os.File, off, length int64) error {
	h.before()
	return h.Zeroing.Zero(ctx, name, f, off, length)
}

// hookedCreate is loopdir with a hook before each Create.
type hookedCreate struct {
	*loopdir.Driver
	before func(name string)
}

func (h hookedCreate) Create(ctx context.Context, name string, size int64, a meta.Attrs) (volmap.Volume, error) {
	h.before(name)
	return h.Driver.Create(ctx, name, size, a)
}

// withoutDetacher is a driver with every capability of loopdir but
// Detacher (and Zeroer).
type withoutDetacher struct {
	volmap.Driver
	volmap.Creator
	volmap.Remover
	volmap.Renamer
	volmap.Replacer
	volmap.Resizer
	volmap.NameChecker
	volmap.SpaceReporter
}

// mountConfigs are the variants every lifecycle test runs on: a linear
// pool of 512-byte blocks zeroed by volfs itself through /dev/fuse, and a
// thin pool of 4 KiB blocks zeroed by the driver through io_uring.
var mountConfigs = []struct {
	name string
	cfg  mountConfig
}{
	{"linear-512-devfuse", mountConfig{}},
	{"thin-4k-zeroer-uring", mountConfig{Config: loopdir.Config{Thin: true, BlockSize: 4096}, Zeroer: true, IOUring: true}},
}

// forEachMount runs test once per mount variant, each on a fresh mount.
func forEachMount(t *testing.T, test func(t *testing.T, m *testMount)) {
	for _, c := range mountConfigs {
		t.Run(c.name, func(t *testing.T) { test(t, newTestMount(t, c.cfg)) })
	}
}

// newTestMount mounts volfs over a new loopdir driver.
func newTestMount(t *testing.T, cfg mountConfig) *testMount {
	t.Helper()
	testutil.RequireRoot(t)
	if cfg.Dir == "" {
		cfg.Dir = testutil.ScratchDir(t)
	}
	mnt := t.TempDir()
	d, err := loopdir.New(cfg.Config)
	if err != nil {
		t.Fatal(err)
	}
	closeDriver := func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	}
	var drv volmap.Driver = d
	if cfg.Zeroer {
		drv = loopdir.Zeroing{Driver: d}
	}
	if cfg.NoDetacher {
		drv = withoutDetacher{d, d, d, d, d, d, d, d}
	}
	if cfg.BeforeCreate != nil {
		drv = hookedCreate{d, cfg.BeforeCreate}
	}
	if cfg.Layouts {
		drv = newLayoutDriver(d)
	}
	if cfg.SetAttrs != nil {
		drv = hookedSetAttrs{d, cfg.SetAttrs}
	}
	if cfg.BeforeZero != nil {
		drv = hookedZero{loopdir.Zeroing{Driver: d}, cfg.BeforeZero}
	}
	m := &testMount{t: t, dir: mnt, d: d, log: &syncBuffer{}}
	m.root = NewRoot(Options{Driver: drv, Log: slog.New(slog.NewTextHandler(m.log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	srv, err := Mount(m.dir, m.root, MountOptions{IOUring: cfg.IOUring, Debug: testing.Verbose()})
	if err != nil {
		closeDriver()
		t.Fatalf("mount: %v", err)
	}
	var once sync.Once
	m.unmount = func() {
		once.Do(func() {
			if err := srv.Unmount(); err != nil {
				t.Errorf("unmount %s: %v", m.dir, err)
			}
			srv.Wait()
			m.root.Shutdown(context.Background())
			closeDriver()
			if t.Failed() {
				t.Logf("server log:\n%s", m.log.String())
			}
		})
	}
	t.Cleanup(m.unmount)
	return m
}

// path is the path of a file of the mount.
func (m *testMount) path(name string) string { return filepath.Join(m.dir, name) }

// waitFor polls cond until it holds: a release (the last close) reaches
// the server after close(2) has returned.
func (m *testMount) waitFor(what string, cond func() bool) {
	m.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			m.t.Fatalf("still not %s after 5 s", what)
		}
	}
}

// volume is the driver's description of name, or false.
func (m *testMount) volume(name string) (volmap.Volume, bool) {
	v, err := m.d.Lookup(context.Background(), name)
	if err != nil && !errors.Is(err, volmap.ErrNotFound) {
		m.t.Fatalf("Lookup(%q): %v", name, err)
	}
	return v, err == nil
}

// waitVolumeSize waits until name's volume is size bytes (it is trimmed
// at the last close, which the server sees after close(2) returns).
func (m *testMount) waitVolumeSize(name string, size int64) {
	m.t.Helper()
	m.waitFor(fmt.Sprintf("volume %q of %d bytes", name, size), func() bool {
		v, ok := m.volume(name)
		return ok && v.Size == size
	})
}

// waitClosed waits until the server has seen the last close of name.
func (m *testMount) waitClosed(name string) {
	m.t.Helper()
	v, ok := m.volume(name)
	if !ok {
		m.t.Fatalf("no volume %q", name)
	}
	m.waitFor(name+" closed", func() bool { return m.root.openImage(inoOf(v.Identity())) == nil })
}

// waitNoDetached waits until no removed-while-open volume is left.
func (m *testMount) waitNoDetached() {
	m.t.Helper()
	m.waitFor("purged", func() bool { return len(m.d.Detached()) == 0 })
}

// writeFile makes name with data (closed again) and waits for its
// volume and for the server's last close (RELEASE comes after close(2)
// has returned; FLUSH already created the volume).
func (m *testMount) writeFile(name string, data []byte) {
	m.t.Helper()
	if err := os.WriteFile(m.path(name), data, 0o644); err != nil {
		m.t.Fatal(err)
	}
	m.waitFor("created "+name, func() bool { _, ok := m.volume(name); return ok })
	m.waitClosed(name)
}

// checkFile checks a file's size and, byte for byte, its content.
func (m *testMount) checkFile(name string, want []byte) {
	m.t.Helper()
	got, err := os.ReadFile(m.path(name))
	if err != nil {
		m.t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		m.t.Fatalf("%s: %d bytes, first difference at %d; want %d bytes", name, len(got), firstDiff(got, want), len(want))
	}
}

// checkZero has a child process (cmp) check that n bytes at off of name
// read as zeros.
func (m *testMount) checkZero(name string, off, n int64) {
	m.t.Helper()
	out, err := exec.Command("cmp", "-i", strconv.FormatInt(off, 10)+":0", "-n", strconv.FormatInt(n, 10),
		m.path(name), "/dev/zero").CombinedOutput()
	if err != nil {
		m.t.Fatalf("%s: [%d, %d) is not all zeros: %v: %s", name, off, off+n, err, out)
	}
}

// holdElsewhere keeps name's loop device open in another process (a VM on
// the volume) until the returned function runs or the test ends.
func (m *testMount) holdElsewhere(name string) func() {
	m.t.Helper()
	dev := m.d.Device(name)
	if dev == "" {
		m.t.Fatalf("no device for %q", name)
	}
	cmd := exec.Command("sh", "-c", `exec 3<"$1"; read -r _`, "sh", dev)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		m.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.waitFor("holding "+dev, func() bool {
		return testutil.SameFile(fmt.Sprintf("/proc/%d/fd/3", cmd.Process.Pid), dev)
	})
	var once sync.Once
	release := func() { once.Do(func() { stdin.Close(); _ = cmd.Wait() }) }
	m.t.Cleanup(release)
	return release
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// pattern is n bytes that differ with seed and from block to block.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/512) ^ byte(i) ^ seed
	}
	return b
}

// syncBuffer is the server's log, shown when a test fails.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
