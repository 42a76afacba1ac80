package main

import (
	"context"
	"log/slog"

	"github.com/volfs/volfs/volmap"
	"github.com/volfs/volfs/volmap/lvm"
)

func newLVMDriver(ctx context.Context, c *mountCmd, log *slog.Logger) (volmap.Driver, error) {
	layout, err := c.layoutOf()
	if err != nil {
		return nil, err
	}
	return lvm.New(ctx, lvm.Config{VG: c.vg, ThinPool: c.thinPool, Tag: c.tag, Log: log, PoolLimit: c.poolLimit,
		CacheTTL: c.cacheTTL, Layout: layout, LiveMigration: c.liveMigration, RunDir: runDir + "/shared"})
}
