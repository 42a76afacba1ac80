package main

import (
	"os/user"
	"strconv"

	volfs "github.com/volfs/volfs/fs"
)

// defaultsFlags are --uid, --gid and --file-mode of `volfs mount`.
type defaultsFlags struct {
	uid, gid, mode string
}

// defaults parses the flags: users and groups by name or number, the mode
// in octal. A mistake is a usage error.
func (f defaultsFlags) defaults() (volfs.Defaults, error) {
	var d volfs.Defaults
	if f.uid != "" {
		id, err := lookupID(f.uid, func(s string) (string, error) {
			u, err := user.Lookup(s)
			if err != nil {
				return "", err
			}
			return u.Uid, nil
		})
		if err != nil {
			return d, usagef("--uid %s: no such user (a user name or a number)", f.uid)
		}
		d.UID = &id
	}
	if f.gid != "" {
		id, err := lookupID(f.gid, func(s string) (string, error) {
			g, err := user.LookupGroup(s)
			if err != nil {
				return "", err
			}
			return g.Gid, nil
		})
		if err != nil {
			return d, usagef("--gid %s: no such group (a group name or a number)", f.gid)
		}
		d.GID = &id
	}
	if f.mode != "" {
		m, err := strconv.ParseUint(f.mode, 8, 32)
		if err != nil || m > 07777 {
			return d, usagef("--file-mode %s: not an octal mode such as 0660", f.mode)
		}
		mode := uint32(m)
		d.Mode = &mode
	}
	return d, nil
}

// lookupID takes a number as it is (ids need not have a name) and looks a
// name up.
func lookupID(s string, byName func(string) (string, error)) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil && n != 1<<32-1 {
		return uint32(n), nil
	}
	id, err := byName(s)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(id, 10, 32)
	return uint32(n), err
}
