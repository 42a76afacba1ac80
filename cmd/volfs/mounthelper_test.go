package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHelperArgs(t *testing.T) {
	for _, c := range []struct {
		source string
		opts   []string
		sloppy bool
		want   string // volfs mount arguments, or the error
	}{
		{"vg0", nil, false, "--vg=vg0 -- /mnt"},
		{"vg0/pool", []string{"rw"}, false, "--vg=vg0 --thin-pool=pool --read-only=false -- /mnt"},
		{"vg0", []string{"ro,_netdev,nofail,noauto,x-systemd.before=libvirtd.service,defaults,user,noexec,nosuid,nodev,noatime"}, false,
			"--vg=vg0 --read-only -- /mnt"},
		{"vg0", []string{"tag=vms,state-dir=/s,read-only,io-uring=false,allow_other=false,log-file=/a b,log-level=warn,debug"}, false,
			"--vg=vg0 --tag=vms --state-dir=/s --read-only --io-uring=false --allow-other=false --log-file=/a b --log-level=warn --debug -- /mnt"},
		{"volfs", []string{"device=/dev/loop[0-9]", `device="/dev/a,b",ro`}, false,
			"--device=/dev/loop[0-9] --device=/dev/a,b --read-only -- /mnt"},
		{"/dev/zvol/tank/*", []string{"rw"}, false, "--read-only=false --device=/dev/zvol/tank/* -- /mnt"},
		{"/dev/loop3", []string{"device=/dev/loop4"}, false, "--device=/dev/loop4 -- /mnt"},
		{"/root/volfs", []string{"vg=vg0"}, false, "--vg=vg0 -- /mnt"},
		{"images", []string{"vg=vg0,thin_pool=p"}, false, "--vg=vg0 --thin-pool=p -- /mnt"},
		{"vg0", []string{"bogus=1,tag=t"}, true, "--vg=vg0 --tag=t -- /mnt"},
		{"vg0", []string{"bogus"}, false, `error: unknown mount option "bogus"`},
		{"vg0", []string{"tag"}, false, "error: option tag needs a value"},
		{"vg0", []string{"sync"}, false, "error: option sync is not supported"},
		{"vg0", []string{"remount,ro"}, false, "error: remount is not supported"},
		{"vg0", []string{"foreground"}, false, "error: option foreground is not for mount(8)"},
		{"vg0/", nil, false, `error: source "vg0/"`},
		{"vg0/a/b", nil, false, `error: source "vg0/a/b"`},
		{"", nil, false, `error: source ""`},
	} {
		args, _, err := helperArgs(c.source, "/mnt", c.opts, c.sloppy, newMountCmd().Flags())
		got := strings.Join(args, " ")
		if err != nil {
			if !errors.As(err, new(usageError)) {
				t.Errorf("%s -o %v: %v is not a usage error", c.source, c.opts, err)
			}
			got = "error: " + err.Error()
		}
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("%s -o %v:\n got %s\nwant %s", c.source, c.opts, got, c.want)
		}
	}
}

func TestSplitOptions(t *testing.T) {
	got := strings.Join(splitOptions(`a,b="x,y",,c=d`), "|")
	if want := `a|b="x,y"||c=d`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestMountSource(t *testing.T) {
	for _, c := range []struct {
		c    mountCmd
		want string
	}{
		{mountCmd{vg: "vg0"}, "vg0"},
		{mountCmd{vg: "vg0", thinPool: "pool"}, "vg0/pool"},
		{mountCmd{devices: []string{"/dev/loop3", "/dev/zvol/*"}}, "/dev/loop3,/dev/zvol/*"},
	} {
		if got := c.c.source(); got != c.want {
			t.Errorf("source() = %q, want %q", got, c.want)
		}
	}
}

// The helper's help is its man page (mount.fuse.volfs.8): a golden file.
// VOLFS_UPDATE_GOLDEN=1 rewrites it.
func TestMountHelperHelpGolden(t *testing.T) {
	cmd := newMountHelperCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", helperName+".help.golden")
	if os.Getenv("VOLFS_UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) {
		t.Errorf("%s --help differs from %s (VOLFS_UPDATE_GOLDEN=1 updates it):\n%s", helperName, golden, out.String())
	}
}

func TestLogLevelFlag(t *testing.T) {
	for lvl, ok := range map[string]bool{"debug": true, "info": true, "warn": true, "error": true, "trace": false, "": false} {
		c := &mountCmd{logLevel: lvl}
		if err := c.checkLogFlags(); (err == nil) != ok {
			t.Errorf("--log-level %q: %v", lvl, err)
		}
	}
}

func TestJournalPrefix(t *testing.T) {
	var b bytes.Buffer
	c := &mountCmd{logLevel: "debug"}
	log := c.newLogger(&b, true).With("mount", "/m")
	log.Debug("d")
	log.Info("i")
	log.Warn("w")
	log.Error("e")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	for i, prio := range []string{"<7>", "<6>", "<4>", "<3>"} {
		if i >= len(lines) || !strings.HasPrefix(lines[i], prio+"level=") || strings.Contains(lines[i], "time=") ||
			!strings.Contains(lines[i], "mount=/m") {
			t.Errorf("line %d: want %s, no time, the mount: %q", i, prio, lines)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	root := newRootCmd()
	root.SetArgs([]string{"umont"})
	root.SetOut(new(bytes.Buffer))
	err := root.Execute()
	if !errors.As(err, new(usageError)) || !strings.Contains(err.Error(), `unknown command "umont"`) ||
		!strings.Contains(err.Error(), "umount") || !strings.HasSuffix(err.Error(), "see volfs --help") {
		t.Errorf("volfs umont: %v", err)
	}
}
