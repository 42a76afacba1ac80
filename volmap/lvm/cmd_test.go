package lvm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volfs/volfs/volmap"
)

// Messages captured from lvm2 2.03.16 in the test guest.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		stderr string
		want   error
	}{
		{`  Logical Volume "lin" already exists in volume group "vgx"`, volmap.ErrExists},
		{`  Logical Volume "s1" already exists in volume group "vgx"`, volmap.ErrExists},
		{`  Volume group "vgx" has insufficient free space (740 extents): 25600 required.`, volmap.ErrNoSpace},
		{`  Insufficient free space: 51187 extents needed, but only 752 available`, volmap.ErrNoSpace},
		{`  Insufficient suitable allocatable extents for logical volume lv: 10 more required`, volmap.ErrNoSpace},
		{"  WARNING: Thin pool vgx/pool is out of data space.\n  Cannot create new thin volume, free space in thin pool vgx/pool reached threshold.", volmap.ErrNoSpace},
		{`  VG vgx metadata on /dev/vda (1048000 bytes) exceeds maximum metadata size (1047552 bytes)`, volmap.ErrNoSpace},
		{`  Logical volume vgx/lin in use.`, volmap.ErrInUse},
		{`  Logical volume vgx/held is used by another device.`, volmap.ErrInUse},
		{`  Logical volume vgx/fs contains a filesystem in use.`, volmap.ErrInUse},
		{`  Can't remove open logical volume "x"`, volmap.ErrInUse},
		{`  Volume group "nosuchvg" not found` + "\n  Cannot process volume group nosuchvg", volmap.ErrNotFound},
		{`  Failed to find logical volume "vgx/nosuch"`, volmap.ErrNotFound},
		{`  Existing logical volume "nosuch" not found in volume group "vgx"`, volmap.ErrNotFound},
		{"  Names starting \"snapshot\" are reserved. Please choose a different LV name.\n  Run `lvcreate --help' for more information.", volmap.ErrInvalidName},
		{`  Names including "_tmeta" are reserved. Please choose a different LV name.`, volmap.ErrInvalidName},
		{`  Logical volume name "a%b" is invalid.`, volmap.ErrInvalidName},
		{"  Invalid argument for --addtag: bad tag\n  Error during parsing of command line.", volmap.ErrInvalidName},
		{`  Internal error: LV name "vgx/aaaa" length 133 is not supported.`, volmap.ErrNameTooLong},
		{`  New logical volume name "bbbb" may not exceed 122 characters.`, volmap.ErrNameTooLong},
		{`  Name "vgx-a--a--a" too long.` + "\n  Failed to set device name for vgx-a--a\n  Failed to activate new LV vgx/a-a.", volmap.ErrNameTooLong},
		// The udev problem is not a missing volume.
		{`  /dev/vgx/a: not found: device not cleared` + "\n  Aborting. Failed to wipe start of new LV.", nil},
		{"  /run/lock/lvm/V_vgx: flock failed: Resource temporarily unavailable\n  Can't get lock for vgx.\n  Cannot process volume group vgx", nil},
		{"  WARNING: Sum of all thin volume sizes (128.00 MiB) exceeds the size of thin pool vgx/pool (64.00 MiB).", nil},
		{"", nil},
	} {
		got := classify(tc.stderr)
		if got != tc.want {
			t.Errorf("classify(%q) = %v, want %v", tc.stderr, got, tc.want)
		}
	}
}

func TestCmdError(t *testing.T) {
	e := &CmdError{
		Args:     []string{"lvm", "lvcreate", "--yes", "-n", "my disk", "vgx"},
		ExitCode: 5,
		Stderr:   "  WARNING: noise\n  Volume group \"vgx\" has insufficient free space (0 extents): 1 required.\n",
		Err:      errors.New("exit status 5"),
	}
	msg := e.Error()
	for _, want := range []string{"lvm lvcreate --yes -n 'my disk' vgx", "exit status 5", "insufficient free space"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "noise") {
		t.Errorf("error %q repeats warnings next to an error", msg)
	}
	wrapped := errors.Join(errors.New("create x"), e)
	if !errors.Is(wrapped, volmap.ErrNoSpace) || errors.Is(wrapped, volmap.ErrExists) {
		t.Errorf("sentinels: ErrNoSpace=%v ErrExists=%v", errors.Is(wrapped, volmap.ErrNoSpace), errors.Is(wrapped, volmap.ErrExists))
	}
	var ce *CmdError
	if !errors.As(wrapped, &ce) || ce.ExitCode != 5 {
		t.Errorf("errors.As: %v", ce)
	}
	long := shellJoin([]string{"lvm", strings.Repeat("x", 1000), "end"}, 300)
	if len(long) > 320 || !strings.HasSuffix(long, "end") {
		t.Errorf("shellJoin did not shorten: %d %q", len(long), long[len(long)-10:])
	}
}

// fakeLVM writes a shell script standing in for the lvm binary: it records
// its arguments and environment, and runs body.
func fakeLVM(t *testing.T, body string) (path, dir string) {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir = t.TempDir()
	path = filepath.Join(dir, "lvm")
	script := "#!/bin/sh\nD=" + dir + "\nprintf '%s\\n' \"$@\" > $D/args\necho \"LC_ALL=$LC_ALL\" > $D/env\n" + body + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, dir
}

func TestRunnerArgsAndEnv(t *testing.T) {
	path, dir := fakeLVM(t, `echo '{"report":[{"vg":[{"vg_name":"vg0","vg_size":"8","vg_free":"4","vg_extent_size":"4"}]}]}'`)
	t.Setenv("LC_ALL", "de_DE.UTF-8")
	r := &Runner{Path: path, Config: "activation/udev_sync=0"}
	out, err := r.Report(context.Background(), "vgs", vgFields, "vg0")
	if err != nil {
		t.Fatal(err)
	}
	vgs, err := ParseVGs(out)
	if err != nil || len(vgs) != 1 || vgs[0].Free != 4 {
		t.Fatalf("ParseVGs = %+v, %v", vgs, err)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	want := "vgs\n--yes\n--config\nglobal/wait_for_locks=1 activation/udev_sync=0\n--reportformat\njson\n--units\nb\n--nosuffix\n-o\n" + vgFields + "\nvg0\n"
	if string(args) != want {
		t.Errorf("args:\n%s\nwant:\n%s", args, want)
	}
	env, _ := os.ReadFile(filepath.Join(dir, "env"))
	if string(env) != "LC_ALL=C\n" {
		t.Errorf("env: %q", env)
	}
}

// TestRunnerHelpOnce: each command's --help runs once per Runner (the
// mount asks lvs's twice); a failed one is asked again.
func TestRunnerHelpOnce(t *testing.T) {
	path, dir := fakeLVM(t, `echo run >> $D/runs
[ -e $D/fail ] && exit 3
echo "  --devices String"`)
	r := &Runner{Path: path}
	if err := os.WriteFile(filepath.Join(dir, "fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.help(context.Background(), "lvs"); err == nil {
		t.Fatal("help of a failing lvm: no error")
	}
	os.Remove(filepath.Join(dir, "fail"))
	for range 3 {
		out, err := r.help(context.Background(), "lvs")
		if err != nil || !strings.Contains(out, "--devices") {
			t.Fatalf("help = %q, %v", out, err)
		}
	}
	if _, err := r.help(context.Background(), "lvresize"); err != nil {
		t.Fatal(err)
	}
	runs, _ := os.ReadFile(filepath.Join(dir, "runs"))
	if n := strings.Count(string(runs), "run"); n != 3 {
		t.Errorf("lvm ran %d times for 1 failed and 4 good help requests of 2 commands; want 3", n)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	if string(args) != "lvresize\n--help\n" {
		t.Errorf("last args %q", args)
	}
}

func TestRunnerError(t *testing.T) {
	path, _ := fakeLVM(t, `echo '  Failed to find logical volume "vg0/x"' >&2; exit 5`)
	r := &Runner{Path: path}
	_, err := r.Run(context.Background(), "lvremove", "vg0/x")
	var ce *CmdError
	if !errors.As(err, &ce) || ce.ExitCode != 5 || !strings.Contains(ce.Stderr, "Failed to find") {
		t.Fatalf("err = %#v", err)
	}
	if !errors.Is(err, volmap.ErrNotFound) {
		t.Fatalf("%v does not unwrap to ErrNotFound", err)
	}
	if ce.Args[0] != path || ce.Args[1] != "lvremove" || ce.Args[len(ce.Args)-1] != "vg0/x" {
		t.Fatalf("Args = %q", ce.Args)
	}

	r = &Runner{Path: filepath.Join(t.TempDir(), "missing")}
	if _, err := r.Run(context.Background(), "lvs"); !errors.As(err, &ce) || ce.ExitCode != -1 {
		t.Fatalf("missing binary: %#v", err)
	}
}

func TestRunnerRetriesLock(t *testing.T) {
	saved := lockRetries
	lockRetries = []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}
	t.Cleanup(func() { lockRetries = saved })
	// Fails with a lock error twice, then succeeds.
	path, dir := fakeLVM(t, `n=$(cat $D/count 2>/dev/null || echo 0); echo $((n+1)) > $D/count
if [ $n -lt 2 ]; then echo "  Can't get lock for vg0." >&2; exit 5; fi
echo ok`)
	r := &Runner{Path: path}
	out, err := r.Run(context.Background(), "lvcreate", "vg0")
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("Run = %q, %v", out, err)
	}
	if n, _ := os.ReadFile(filepath.Join(dir, "count")); strings.TrimSpace(string(n)) != "3" {
		t.Fatalf("ran %s times, want 3", n)
	}
	// Never gets the lock: gives up after the retries.
	path, dir = fakeLVM(t, `n=$(cat $D/count 2>/dev/null || echo 0); echo $((n+1)) > $D/count
echo "  Can't get lock for vg0." >&2; exit 5`)
	r = &Runner{Path: path}
	if _, err := r.Run(context.Background(), "lvcreate", "vg0"); err == nil {
		t.Fatal("Run succeeded")
	}
	if n, _ := os.ReadFile(filepath.Join(dir, "count")); strings.TrimSpace(string(n)) != "4" {
		t.Fatalf("ran %s times, want 4", n)
	}
}

func TestRunnerCancel(t *testing.T) {
	// SIGINT ends a command waiting for a lock; the error says the
	// context ended.
	path, _ := fakeLVM(t, `trap 'kill $!; echo "  Giving up waiting for lock." >&2; exit 5' INT; sleep 10 & wait`)
	r := &Runner{Path: path, CancelGrace: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.Run(ctx, "lvcreate", "vg0")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatalf("took %v: SIGINT did not end the command", time.Since(start))
	}
}
