package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/volfs/volfs/volmap"
)

func newLVMDriver(ctx context.Context, c *mountCmd, log *slog.Logger) (volmap.Driver, error) {
	return nil, errors.New("--vg: the LVM driver is not built yet")
}
