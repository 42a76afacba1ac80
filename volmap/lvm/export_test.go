package lvm

import "context"

// SetRollbackFault makes Rollback fail at a step (1-3; nil: no fault).
func SetRollbackFault(f func(step int) error) { rollbackFault = f }

// ScanDevices is scanDevices.
var ScanDevices = scanDevices

// CachedLV returns the LV lvName as the driver's own changes (patch) left
// it in the listing.
func (d *Driver) CachedLV(lvName string) (LV, bool) {
	d.cacheMu.Lock()
	defer d.cacheMu.Unlock()
	o, ok := d.own[lvName]
	return o.lv, ok
}

// ReadLV is readLV.
func (d *Driver) ReadLV(ctx context.Context, lvName string) (LV, error) { return d.readLV(ctx, lvName) }

// Renewals counts the expired listings served again because the VG's
// stamp had not changed.
func (d *Driver) Renewals() int64 { return d.renewals.Load() }

// WaitListing waits for the refresh of the listing under way, if any.
func (d *Driver) WaitListing() {
	d.cacheMu.Lock()
	f := d.flight
	d.cacheMu.Unlock()
	if f != nil {
		<-f.done
	}
}
