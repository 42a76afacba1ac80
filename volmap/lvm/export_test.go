package lvm

// SetRollbackFault makes Rollback fail at step 2 or 3 (nil: no fault).
func SetRollbackFault(f func(step int) error) { rollbackFault = f }

// ScanDevices is scanDevices.
var ScanDevices = scanDevices
