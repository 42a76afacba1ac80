// Package mountinfo reads /proc/self/mountinfo: whether a directory is a
// mount point, and the octal escapes of its paths.
package mountinfo

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// MountPoint reports whether dir is the mount point of a mount, and that
// mount's file system type.
func MountPoint(dir string) (bool, string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := fields(s.Text())
		if len(fields) < 10 || Unescape(fields[4]) != dir {
			continue
		}
		for i := 6; i+1 < len(fields); i++ { // the optional fields, ended by "-"
			if fields[i] == "-" {
				return true, fields[i+1]
			}
		}
		return true, "?"
	}
	return false, ""
}

// Unescape undoes the octal escapes of /proc/self/mountinfo paths.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
