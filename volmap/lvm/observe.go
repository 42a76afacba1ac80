package lvm

import (
	"sync/atomic"
	"time"
)

// Observer is told of every lvm command that ran: its name (lvs,
// lvcreate, ...), how long it took, and whether it failed. Metrics use it.
type Observer func(command string, took time.Duration, failed bool)

var observer atomic.Pointer[Observer]

// SetObserver installs o for every Runner of the process (nil: none).
func SetObserver(o Observer) {
	if o == nil {
		observer.Store(nil)
		return
	}
	observer.Store(&o)
}

func observe(command string, took time.Duration, failed bool) {
	if o := observer.Load(); o != nil {
		(*o)(command, took, failed)
	}
}
