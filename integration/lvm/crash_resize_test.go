package lvm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// killAfterLvresize returns server environment that puts an lvm wrapper
// first in PATH: while the flag file it returns exists, the wrapper runs
// the next lvresize, removes the flag and SIGKILLs the server (its
// parent), so the crash falls right after the LV changed size and before
// anything the server would do next (`lvresize --help`, which the server
// runs once to learn lvresize's options, does not count).
func (e *env) killAfterLvresize() (env []string, flag string) {
	e.t.Helper()
	real, err := exec.LookPath("lvm")
	if err != nil {
		e.t.Fatal(err)
	}
	dir := filepath.Join(e.base, "lvm-wrapper")
	flag = filepath.Join(e.base, "kill-after-lvresize")
	script := "#!/bin/sh\n" + real + ` "$@"
rc=$?
if [ "$1" = lvresize ] && [ "$2" != --help ] && rm "` + flag + `" 2>/dev/null; then kill -9 $PPID; fi
exit $rc
`
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "lvm"), []byte(script), 0o755); err != nil {
		e.t.Fatal(err)
	}
	return []string{"PATH=" + dir + ":" + os.Getenv("PATH")}, flag
}

// A crash right after volfs changed a file's LV size never gives the file
// a size nobody set: the size is recorded before the LV grows or shrinks.
// Before, a file with no size recorded (the LV's size: an LV made by
// another tool, or a file of whole extents) that grew by a write became,
// after a SIGKILL just after the lvresize, the whole grown LV, whose new
// extents on a linear LV held a removed LV's data; and a truncate of a
// closed file recorded the size after the lvresize, so the crash left the
// file the trimmed LV's size, neither the old size nor the new.
func TestCrashAfterResize(t *testing.T) {
	for _, thin := range []bool{false, true} {
		name := "linear"
		if thin {
			name = "thin"
		}
		t.Run(name, func(t *testing.T) {
			e := newVG(t)
			create := func(lvName, size string) {
				args := []string{"-q", "-Wn", "-L", size, "-n", lvName, e.vg}
				if thin {
					args = []string{"-q", "-V", size, "--thin", "-n", lvName, e.vg + "/pool"}
				}
				sh(t, "lvcreate", args...)
			}
			if thin {
				e.thinPool("pool", "512m")
			}
			// A removed LV's data on the extents the grown file will get.
			marker := bytes.Repeat([]byte("old volume data "), int(96*mib)/16)
			sh(t, "lvcreate", "-q", "-Wn", "-L", "96m", "-n", "old", e.vg)
			mfile := filepath.Join(e.base, "marker")
			if err := os.WriteFile(mfile, marker, 0o600); err != nil {
				t.Fatal(err)
			}
			sh(t, "dd", "if="+mfile, "of=/dev/"+e.vg+"/old", "bs=1M", "oflag=direct", "status=none")
			sh(t, "lvremove", "-q", "-y", e.vg+"/old")
			// Two LVs made by another tool, with no volfs tags: each file
			// is its LV's size (8 and 16 MiB).
			src := e.file("src", int(16*mib), 7)
			create("grow", "8m")
			create("cut", "16m")
			sh(t, "dd", "if="+src, "of=/dev/"+e.vg+"/grow", "bs=1M", "count=8", "oflag=direct", "status=none")
			sh(t, "dd", "if="+src, "of=/dev/"+e.vg+"/cut", "bs=1M", "oflag=direct", "status=none")
			var m *mount
			if thin {
				m = e.mount("--thin-pool", "pool")
			} else {
				m = e.mount()
			}
			env, flag := e.killAfterLvresize()
			// armed restarts the server with the wrapper, armed for its
			// next lvresize, and returns the server's pid.
			armed := func() int {
				m.umount()
				m.env = env
				m.start()
				m.env = nil
				if err := os.WriteFile(flag, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				return m.serverPid()
			}

			// A write past the end: killed right after the LV grew.
			pid := armed()
			out, err := exec.Command("dd", "if="+src, "of="+m.path("grow"), "bs=1M", "count=1",
				"seek=8", "conv=notrunc", "status=none").CombinedOutput()
			if _, ferr := os.Stat(flag); ferr == nil {
				t.Fatalf("the write past the end ran no lvresize (dd: %v: %s)", err, out)
			}
			m.crashed(pid)
			m.start()
			t.Logf("grown LV after the crash: %d bytes", e.lv("grow").Size)
			got := size(t, m.path("grow"))
			if got != 8*mib && got != 9*mib {
				t.Errorf("after a crash during a write at 8 MiB of an 8 MiB file: size %d, want 8 MiB (or 9)", got)
			}
			b, err := os.ReadFile(m.path("grow"))
			if err != nil {
				t.Fatal(err)
			}
			if i := bytes.Index(b, []byte("old volume data")); i >= 0 {
				t.Errorf("the file shows a removed LV's data at offset %d", i)
			}
			if want, _ := os.ReadFile(src); len(b) < int(8*mib) || !bytes.Equal(b[:8*mib], want[:8*mib]) {
				t.Error("the file's first 8 MiB changed")
			}

			// A truncate of a closed file: killed right after the LV
			// shrank.
			pid = armed()
			// truncate(2) of the path: no open, so the truncate itself
			// shrinks the LV (coreutils' truncate opens the file, and the
			// last close would).
			const cut = 5*mib + 123
			err = os.Truncate(m.path("cut"), cut)
			if _, ferr := os.Stat(flag); ferr == nil {
				t.Fatalf("the truncate ran no lvresize (truncate: %v)", err)
			}
			m.crashed(pid)
			m.start()
			if got := size(t, m.path("cut")); got != cut && got != 16*mib {
				t.Errorf("after a crash during truncate -s %d of a 16 MiB file: size %d (LV %d), want %d or 16 MiB",
					cut, got, e.lv("cut").Size, cut)
			}
			sameDataPrefix(t, m.path("cut"), src, cut)
		})
	}
}
