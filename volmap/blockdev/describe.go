package blockdev

import (
	"context"
	"fmt"

	"github.com/volfs/volfs/volmap"
)

var _ volmap.Describer = (*Driver)(nil)

// Describe names the device behind a file, as matched by the glob.
func (d *Driver) Describe(_ context.Context, name string) (volmap.Details, error) {
	devs, err := d.devices()
	if err != nil {
		return volmap.Details{}, err
	}
	dev, ok := devs[name]
	if !ok {
		return volmap.Details{}, fmt.Errorf("%s: %w", name, volmap.ErrNotFound)
	}
	return volmap.Details{Kind: "device", Path: dev.path}, nil
}
