package lvm

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/volfs/volfs/volmap"
)

var (
	_ volmap.Describer    = (*Driver)(nil)
	_ volmap.PoolReporter = (*Driver)(nil)
)

// Describe says which LV a file is: its segment type, /dev/VG/LV (the path
// lvdisplay shows) and thin pool, and on a shared VG the other host that
// has it active.
func (d *Driver) Describe(ctx context.Context, name string) (volmap.Details, error) {
	lv, err := d.file(ctx, name)
	if err != nil {
		return volmap.Details{}, err
	}
	det := volmap.Details{Kind: lvKind(lv), Path: "/dev/" + d.cfg.VG + "/" + lv.Name, Pool: lv.Pool,
		Layout: layoutOf(lv).String(), ActiveOn: d.activeOn(ctx, lv)}
	det.Health, det.Degraded = health(lv)
	if strings.HasPrefix(lv.SegType, "raid") && lv.SyncPercent >= 0 {
		sync := lv.SyncPercent
		det.SyncPercent = &sync
	}
	return det, nil
}

func lvKind(lv LV) string {
	switch {
	case lv.SegType != "":
		return lv.SegType
	case len(lv.Layout) > 0:
		return strings.Join(lv.Layout, ",")
	}
	return "lv"
}

// poolFields are the columns of a thin pool's fill.
const poolFields = "lv_name,lv_size,segtype,data_percent,metadata_percent,lv_health_status,lv_check_needed"

// Pools reports the VG (size, free extents) and every thin pool in it
// (size, data and metadata fill), read fresh: two report commands.
func (d *Driver) Pools(ctx context.Context) ([]volmap.Pool, error) {
	out, err := d.lvm.Report(ctx, "vgs", vgFields, d.cfg.VG)
	if err != nil {
		return nil, fmt.Errorf("space of %s: %w", d.cfg.VG, err)
	}
	vgs, err := ParseVGs(out)
	if err != nil {
		return nil, err
	}
	if len(vgs) != 1 {
		return nil, fmt.Errorf("space of %s: vgs returned %d rows", d.cfg.VG, len(vgs))
	}
	pools := []volmap.Pool{{Name: d.cfg.VG, Kind: "vg", Size: vgs[0].Size, Free: vgs[0].Free,
		DataPercent: -1, MetadataPercent: -1}}
	out, err = d.lvm.Report(ctx, "lvs", poolFields, "-S", "segtype=thin-pool", d.cfg.VG)
	if err != nil {
		return nil, fmt.Errorf("thin pools of %s: %w", d.cfg.VG, err)
	}
	thin, err := parsePools(out)
	if err != nil {
		return nil, err
	}
	for _, p := range thin {
		p.Name = d.cfg.VG + "/" + p.Name
		pools = append(pools, p)
	}
	return pools, nil
}

// parsePools reads an lvs report of poolFields.
func parsePools(out []byte) ([]volmap.Pool, error) {
	rows, err := parseRows(out, "lv")
	if err != nil {
		return nil, err
	}
	var pools []volmap.Pool
	for _, r := range rows {
		p := rowParser{row: r}
		pool := volmap.Pool{Name: p.str("lv_name"), Kind: "thin-pool", Size: p.int("lv_size", 0),
			DataPercent: p.percent("data_percent"), MetadataPercent: p.percent("metadata_percent"),
			Health: p.str("lv_health_status"), NeedsCheck: p.str("lv_check_needed") == "check needed"}
		if p.str("segtype") != "thin-pool" {
			continue
		}
		if p.err != nil {
			return nil, fmt.Errorf("lvs report of thin pools: %w", p.err)
		}
		pool.Free = pool.Size
		if pool.DataPercent >= 0 {
			pool.Free = int64(float64(pool.Size) * (100 - pool.DataPercent) / 100)
		}
		pools = append(pools, pool)
	}
	slices.SortFunc(pools, func(a, b volmap.Pool) int { return strings.Compare(a.Name, b.Name) })
	return pools, nil
}
