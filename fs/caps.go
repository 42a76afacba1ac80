package fs

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// capSysAdmin is CAP_SYS_ADMIN's bit in /proc/PID/status's CapEff.
const capSysAdmin = 21

// callerHasSysAdmin reports whether the process behind a request has
// CAP_SYS_ADMIN in its effective set (what the kernel demands for
// trusted.* xattrs). Without a pid (a caller in another pid namespace) or
// a readable status, only uid 0 counts.
func callerHasSysAdmin(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return false
	}
	if c.Pid != 0 {
		if eff, err := effectiveCaps(c.Pid); err == nil {
			return eff&(1<<capSysAdmin) != 0
		}
	}
	return c.Uid == 0
}

func effectiveCaps(pid uint32) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff in /proc/%d/status", pid)
}
