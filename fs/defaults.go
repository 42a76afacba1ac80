package fs

import "github.com/volfs/volfs/meta"

// Defaults are a mount's owner and mode for files that record none: new
// files, and volumes volfs has no attributes for (LVs without volfs tags,
// devices without a state file). A hypervisor running as its own user
// (libvirt-qemu, qemu) can so be given every image of a mount without a
// chown per file. Nil fields leave the usual value: the creator's uid and
// gid and the mode it asked for, or the driver's defaults.
//
// Defaults are shown, not written: a volume keeps no attributes until it
// changes (chmod, a write's mtime), and then records what it showed.
// Recorded attributes always win over the defaults.
type Defaults struct {
	UID, GID *uint32
	Mode     *uint32 // permission bits (07777)
}

func (d Defaults) apply(a *meta.Attrs) {
	if d.UID != nil {
		a.UID = *d.UID
	}
	if d.GID != nil {
		a.GID = *d.GID
	}
	if d.Mode != nil {
		a.Mode = *d.Mode & 07777
	}
}
