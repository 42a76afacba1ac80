package lvm

// SetRollbackFault makes Rollback fail at a step (1-3; nil: no fault).
func SetRollbackFault(f func(step int) error) { rollbackFault = f }

// ScanDevices is scanDevices.
var ScanDevices = scanDevices
