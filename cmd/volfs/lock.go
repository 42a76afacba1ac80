package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/volfs/volfs/internal/lock"
	"github.com/volfs/volfs/internal/proc"
)

// lockDir holds the locks that keep two servers from serving one device or
// one volume group (see package lock).
const lockDir = runDir + "/locks"

func deviceKey(id string) string { return "device " + id }
func vgKey(vg string) string     { return "volume group " + vg }
func vgTagKey(vg, tag string) string {
	return fmt.Sprintf("volume group %s with tag %s", vg, tag)
}

// lockVG claims a volume group for this server. A mount without --tag
// serves every LV of the VG: it takes the VG exclusively. A mount with
// --tag T serves the LVs tagged T: it shares the VG with mounts of other
// tags and takes VG+T exclusively. So two mounts of one VG coexist only
// when both have tags and the tags differ. (An LV carrying both tags is
// still shown by both; tags are the operator's partition of the VG.)
func lockVG(dir, vg, tag string, h lock.Holder) ([]*lock.Lock, error) {
	var he *lock.HeldError
	if tag == "" {
		l, err := lock.Take(dir, vgKey(vg), false, h)
		if errors.As(err, &he) && he.Holder.Mount == "" {
			// Shared holders do not sign the file: name the tagged
			// mounts from their own locks.
			var names []string
			for _, t := range lock.Held(dir, vgKey(vg)+" with tag ") {
				names = append(names, fmt.Sprintf("%s (pid %d)", t.Mount, t.Proc.Pid))
			}
			if len(names) > 0 {
				return nil, fmt.Errorf("volume group %s is served by volfs mounts with --tag at %s: a mount without --tag takes the whole VG; unmount those first, or mount with a --tag of its own",
					vg, strings.Join(names, ", "))
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: unmount it first", err)
		}
		return []*lock.Lock{l}, nil
	}
	shared, err := lock.Take(dir, vgKey(vg), true, h)
	if err != nil {
		return nil, fmt.Errorf("%w without --tag (every LV of the VG): unmount it first", err)
	}
	l, err := lock.Take(dir, vgTagKey(vg, tag), false, h)
	if err != nil {
		shared.Close()
		return nil, fmt.Errorf("%w: unmount it first", err)
	}
	return []*lock.Lock{shared, l}, nil
}

// lockVG takes this server's locks of a --vg mount (none for --device:
// the driver claims each device as it finds it) before LVM is touched, and
// returns who this server is to the locks. The locks live as long as the
// process.
func (c *mountCmd) lockVG(mnt string) (lock.Holder, error) {
	self, err := proc.Self()
	if err != nil {
		return lock.Holder{}, err
	}
	h := lock.Holder{Mount: mnt, Proc: self}
	if c.vg == "" {
		return h, nil
	}
	ls, err := lockVG(lockDir, c.vg, c.tag, h)
	if err != nil {
		return h, err
	}
	c.locks = append(c.locks, ls...)
	return h, nil
}

// claimDevice takes a device for this server (blockdev.Config.Claim).
func (c *mountCmd) claimDevice(id string) error {
	l, err := lock.Take(lockDir, deviceKey(id), false, c.holder)
	if err != nil {
		return fmt.Errorf("%w: unmount it first, or leave this device out of --device", err)
	}
	c.locks = append(c.locks, l)
	return nil
}

// releaseLocks lets go of every lock at a clean exit (their files go too);
// a server that dies loses them all the same, and the next server sweeps
// the files.
func (c *mountCmd) releaseLocks() {
	for _, l := range c.locks {
		l.Close()
	}
	c.locks = nil
}
