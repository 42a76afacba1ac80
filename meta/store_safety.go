package meta

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/volfs/volfs/internal/proc"
)

// checkSafe refuses a state directory that someone other than root (or
// this process's user) could change, as ssh's StrictModes does for
// ~/.ssh: the directory and every parent must be owned by root or us and
// not writable by group or others. A parent that is world-writable with
// the sticky bit (/tmp) is safe: nobody else can rename or remove what we
// own in it.
func checkSafe(dir string) error {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("state directory %s: %w", dir, err)
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return err
	}
	euid := uint32(os.Geteuid())
	for p := real; ; p = filepath.Dir(p) {
		st, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("state directory %s: %w", dir, err)
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("state directory %s: no owner for %s", dir, p)
		}
		what := "state directory " + dir
		if p != real {
			what += ": its parent " + p
		} else if real != dir {
			what += " (" + real + ")"
		}
		switch {
		case sys.Uid != 0 && sys.Uid != euid:
			return fmt.Errorf("%s is owned by uid %d: whoever owns it can give themselves any device; chown root %s, or choose another state directory", what, sys.Uid, p)
		case st.Mode().Perm()&0o022 != 0 && (p == real || st.Mode()&os.ModeSticky == 0):
			return fmt.Errorf("%s is writable by group or others (mode %04o): any of them could give themselves any device; chmod go-w %s (volfs creates it 0700), or choose another state directory", what, st.Mode().Perm(), p)
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}

// Temporary files of Save are named after their process (".tmp-PID-START-"),
// so that leftovers of a dead server can be told from the files another
// running server is about to rename.
const tmpPrefix = ".tmp-"

var tmpOwner = func() string {
	if id, err := proc.Self(); err == nil {
		return fmt.Sprintf("%d-%d", id.Pid, id.Start)
	}
	return fmt.Sprint(os.Getpid())
}()

// removeLeftovers removes temporary files whose process is gone (a server
// killed in the middle of a Save).
func (s *FileStore) removeLeftovers() {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name, ok := strings.CutPrefix(e.Name(), tmpPrefix)
		if !ok {
			continue
		}
		f := strings.SplitN(name, "-", 3)
		if len(f) == 3 {
			if id, err := proc.Parse(f[0] + " " + f[1]); err == nil && id.Running() {
				continue
			}
		}
		os.Remove(filepath.Join(s.dir, e.Name()))
	}
}
