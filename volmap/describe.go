package volmap

import "context"

// Details say where a volume lives, for `volfs ls`.
type Details struct {
	// Kind is what the volume is: "linear", "thin", "striped", "raid1",
	// ... for LVM (its segment type), "device" for an existing block
	// device.
	Kind string `json:"kind"`
	// Path is the volume's block device as its users name it
	// (/dev/VG/LV, the matched device path).
	Path string `json:"path"`
	// Pool is the thin pool of a thin volume.
	Pool string `json:"pool,omitempty"`
	// Layout is the volume's layout as trusted.volfs.layout shows it
	// ("raid1 mirrors=1"); empty when the driver does not say.
	Layout string `json:"layout,omitempty"`
	// Health is "ok", or what is wrong: LVM's lv_health_status
	// ("partial", "refresh needed", "mismatches exist") or a RAID image
	// that failed ("degraded"). Empty when the driver does not say.
	Health string `json:"health,omitempty"`
	// Degraded: a RAID volume runs without one of its copies (or parity).
	Degraded bool `json:"degraded,omitempty"`
	// SyncPercent is how far a RAID volume's copies are in sync (0-100);
	// nil where it does not apply.
	SyncPercent *float64 `json:"sync_percent,omitempty"`
	// ActiveOn names the other host that has the volume in use ("host
	// 2") on storage shared between hosts; this host cannot open it.
	ActiveOn string `json:"active_on,omitempty"`
}

// Describer is implemented by drivers that can say where a volume lives.
type Describer interface {
	Describe(ctx context.Context, name string) (Details, error)
}

// Pool is one place new files take space from, or that fills as files
// are written: a volume group, a thin pool, a set of devices.
type Pool struct {
	// Name is how LVM users write it: "vg0", "vg0/pool".
	Name string `json:"name"`
	// Kind is "vg", "thin-pool" or "devices".
	Kind string `json:"kind"`
	Size int64  `json:"size"`
	Free int64  `json:"free"`
	// DataPercent and MetadataPercent are a thin pool's fill (0-100); -1
	// where it does not apply or LVM does not report it (an inactive
	// pool).
	DataPercent     float64 `json:"data_percent"`
	MetadataPercent float64 `json:"metadata_percent"`
	// Health is a thin pool's state as LVM reports it (lv_health_status):
	// "" when healthy, "out_of_data", "metadata_read_only" (out of
	// metadata space, or read-only after a metadata error) or "failed".
	Health string `json:"health,omitempty"`
	// NeedsCheck says the pool's metadata must be repaired (lvconvert
	// --repair, with the pool inactive) before it allocates again.
	NeedsCheck bool `json:"needs_check,omitempty"`
}

// MetadataFull reports whether a thin pool has stopped allocating for lack
// of metadata space (dm-thin's out-of-metadata-space mode: lvextend
// --poolmetadatasize brings it back online) or after a metadata error.
func (p *Pool) MetadataFull() bool {
	return p.Kind == "thin-pool" && (p.Health == "metadata_read_only" || p.NeedsCheck || p.MetadataPercent >= 100)
}

// PoolReporter is implemented by drivers that can report their pools: for
// LVM, the volume group and every thin pool in it.
type PoolReporter interface {
	Pools(ctx context.Context) ([]Pool, error)
}
