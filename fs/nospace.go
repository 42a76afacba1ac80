package fs

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/volfs/volfs/volmap"
)

// noSpaceEvery is how often a write failing with ENOSPC logs which pool is
// full: a guest retries its writes, and each would log otherwise.
const noSpaceEvery = 10 * time.Second

// noSpace logs, at most once per noSpaceEvery, that a write to the volume
// failed for lack of space and how full its pool is (a thin pool that ran
// out of data space fails writes to unallocated blocks with ENOSPC once
// it is set to --errorwhenfull y). The pool is looked up in the
// background: the failed request does not wait for two lvm reports.
func (r *Root) noSpace(name string) {
	now := time.Now().UnixNano()
	last := r.noSpaceAt.Load()
	if last != 0 && now-last < int64(noSpaceEvery) || !r.noSpaceAt.CompareAndSwap(last, now) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		attrs := []any{slog.String("volume", name)}
		pool := ""
		if de, ok := r.drv.(volmap.Describer); ok {
			if d, err := de.Describe(ctx, name); err == nil {
				pool = d.Pool
			}
		}
		var found *volmap.Pool
		if pr, ok := r.drv.(volmap.PoolReporter); ok {
			pools, err := pr.Pools(ctx)
			if err != nil {
				attrs = append(attrs, slog.Any("pools_err", err))
			}
			for i, p := range pools {
				// Pools are named "vg" and "vg/pool"; Describe says "pool".
				if pool != "" && strings.HasSuffix(p.Name, "/"+pool) || pool == "" && p.Kind == "vg" {
					found = &pools[i]
					break
				}
			}
		}
		if found == nil {
			r.log.Error("write failed: no space left for the volume", attrs...)
			return
		}
		attrs = append(attrs, slog.String("pool", found.Name), slog.String("kind", found.Kind))
		if found.Kind == "thin-pool" {
			attrs = append(attrs, slog.Float64("data_percent", found.DataPercent),
				slog.Float64("metadata_percent", found.MetadataPercent))
			r.log.Error("write failed: thin pool "+found.Name+" is full; writes to unallocated blocks fail with "+
				"ENOSPC until it grows (lvextend -L+SIZE "+found.Name+") or volumes are removed", attrs...)
			return
		}
		attrs = append(attrs, slog.Int64("free", found.Free))
		r.log.Error("write failed: no space left in "+found.Name+" to grow the volume", attrs...)
	}()
}
