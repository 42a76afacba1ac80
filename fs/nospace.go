package fs

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/volfs/volfs/volmap"
)

// noSpaceEvery is how often a failing write logs which pool is full: a
// guest retries its writes, and each would log otherwise.
const noSpaceEvery = 10 * time.Second

// noSpace logs, at most once per noSpaceEvery, that a write to the volume
// failed for lack of space and how full its pool is (a thin pool that ran
// out of data space fails writes to unallocated blocks with ENOSPC once
// it is set to --errorwhenfull y).
func (r *Root) noSpace(name string) { r.explainPool(name, &r.noSpaceAt, false) }

// poolIOError logs, at most once per noSpaceEvery, that a write or flush
// of the volume failed because its thin pool stopped allocating: out of
// metadata space, dm-thin fails the writes that need a new block with EIO
// (whatever the pool's when-full policy). An EIO of a volume whose pool
// is healthy (a failing disk) logs nothing more.
func (r *Root) poolIOError(name string) { r.explainPool(name, &r.poolIOAt, true) }

// explainPool looks the volume's pool up in the background (the failed
// request does not wait for lvm reports) and logs what is wrong with it
// and what to do. onlyMetadata: log only a thin pool out of metadata.
func (r *Root) explainPool(name string, at *atomic.Int64, onlyMetadata bool) {
	now := time.Now().UnixNano()
	last := at.Load()
	if last != 0 && now-last < int64(noSpaceEvery) || !at.CompareAndSwap(last, now) {
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
		if onlyMetadata && pool == "" {
			return
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
		if found != nil && found.Kind == "thin-pool" {
			attrs = append(attrs, slog.String("pool", found.Name), slog.Float64("data_percent", found.DataPercent),
				slog.Float64("metadata_percent", found.MetadataPercent), slog.String("health", found.Health),
				slog.Bool("needs_check", found.NeedsCheck))
		}
		switch {
		case onlyMetadata && (found == nil || !found.MetadataFull()):
		case found == nil:
			r.log.Error("write failed: no space left for the volume", attrs...)
		case found.MetadataFull() && found.NeedsCheck:
			r.log.Error("write failed: thin pool "+found.Name+" metadata needs a repair; the pool is read-only: "+
				"close its images (or unmount), then lvchange -an "+found.Name+"; lvconvert --repair "+found.Name+
				"; lvchange -ay "+found.Name, attrs...)
		case found.MetadataFull():
			r.log.Error("write failed: thin pool "+found.Name+" metadata is full; writes that need a new block "+
				"(to an unallocated block, or one a snapshot shares) fail with EIO until it grows (lvextend "+
				"--poolmetadatasize +SIZE "+found.Name+"), no remount needed", attrs...)
		case found.Kind == "thin-pool":
			r.log.Error("write failed: thin pool "+found.Name+" is full; writes to unallocated blocks fail with "+
				"ENOSPC until it grows (lvextend -L+SIZE "+found.Name+") or volumes are removed", attrs...)
		default:
			attrs = append(attrs, slog.String("pool", found.Name), slog.String("kind", found.Kind),
				slog.Int64("free", found.Free))
			r.log.Error("write failed: no space left in "+found.Name+" to grow the volume", attrs...)
		}
	}()
}
