package lvm

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
)

// checkAutoextend warns, at mount, when LVM will not grow the thin pool
// that new images go to: a full pool fails the writes of every thin
// volume in it (after 60 s queued by default), and snapshots and clones
// make pools fill. LVM's dmeventd extends a pool once its use passes
// activation/thin_pool_autoextend_threshold (100 means never) by
// thin_pool_autoextend_percent (0 means never). A pool's own profile may
// say otherwise; lvmconfig's merged configuration is what most pools use.
func (d *Driver) checkAutoextend(ctx context.Context) {
	out, err := d.lvm.Run(ctx, "lvmconfig", "--typeconfig", "full",
		"activation/thin_pool_autoextend_threshold", "activation/thin_pool_autoextend_percent")
	if err != nil {
		d.log.Debug("could not read LVM's thin pool autoextend settings", slog.Any("err", err))
		return
	}
	threshold, percent, ok := parseAutoextend(string(out))
	if !ok {
		d.log.Debug("could not read LVM's thin pool autoextend settings", slog.String("lvmconfig", string(out)))
		return
	}
	if threshold < 100 && percent > 0 {
		return
	}
	d.log.Warn("LVM does not extend the thin pool automatically (activation/thin_pool_autoextend_threshold = 100 "+
		"or thin_pool_autoextend_percent = 0): when the pool fills, writes to every thin image in it fail; set "+
		"thin_pool_autoextend_threshold (for example 80) and thin_pool_autoextend_percent (for example 20) in the "+
		"activation section of lvm.conf, with dmeventd monitoring on, or watch the pool with volfs status",
		slog.String("pool", d.cfg.VG+"/"+d.cfg.ThinPool), slog.Int("threshold", threshold), slog.Int("percent", percent))
}

// parseAutoextend reads lvmconfig's "thin_pool_autoextend_threshold=N" and
// "thin_pool_autoextend_percent=N" lines.
func parseAutoextend(out string) (threshold, percent int, ok bool) {
	var gotT, gotP bool
	for _, line := range strings.Split(out, "\n") {
		k, v, found := strings.Cut(strings.TrimSpace(line), "=")
		if !found {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			continue
		}
		switch strings.TrimSpace(k) {
		case "thin_pool_autoextend_threshold":
			threshold, gotT = n, true
		case "thin_pool_autoextend_percent":
			percent, gotP = n, true
		}
	}
	return threshold, percent, gotT && gotP
}
