// Package lvm is the volmap driver for LVM2: every public logical volume of
// one volume group (optionally only those carrying a tag) is a file, named
// by volmap.DecodeName of the LV name.
//
// All lvm2 commands go through one wrapper (Runner): LC_ALL=C, --yes, JSON
// reports in bytes, a typed *CmdError that keeps the command line, exit
// status and stderr and unwraps to the volmap sentinels. Mutations of the VG
// are serialized by the driver; LVM's own file locks protect against other
// tools (lvm is told to wait for them). Listings are cached for at most
// Config.CacheTTL so that volumes made or removed by other tools appear or
// vanish within that time.
//
// A shared VG (lvmlockd, lock type sanlock or dlm; shared.go) is mounted on
// several hosts: the mount starts its lockspace, an open activates the LV
// exclusively (its cluster-wide lock) and Idle deactivates it after the
// last close; an LV active on another host is ErrInUse naming that host.
// Config.LiveMigration activates linear LVs shared instead, so that two
// hosts may open one image during a live migration; the LVs a killed
// server left active are released by the next mount on that host.
//
// The driver must never open, change or remove anything that is not a file
// of its mount: every name is encoded and checked against the current
// listing, and an opened device is checked to be that LV (by its
// device-mapper UUID) before it is handed out.
package lvm
