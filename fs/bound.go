package fs

import (
	"context"
	"os"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

// openDeviceFile opens the node's volume. Where a name can come to mean
// another volume (volmap.Binder: a re-pointed --device symlink), the open is
// bound to the volume the node was listed as: the node's mode and owner were
// given to that device, never to whatever the name reaches now.
func (n *Image) openDeviceFile(ctx context.Context, flag int) (*os.File, error) {
	if b, ok := n.root.drv.(volmap.Binder); ok && n.vol.ID != "" {
		return b.OpenBound(ctx, n.name, n.vol.ID, flag)
	}
	return n.root.drv.Open(ctx, n.name, flag)
}

// setAttrs persists attributes, bound like openDeviceFile. Under mu: what
// it records becomes the size the listing will show (recorded), so that
// refresh tells another tool's resize from volfs's own.
func (n *Image) setAttrs(ctx context.Context, a meta.Attrs) error {
	var err error
	if b, ok := n.root.drv.(volmap.Binder); ok && n.vol.ID != "" {
		err = b.SetAttrsBound(ctx, n.name, n.vol.ID, a)
	} else {
		err = n.root.drv.SetAttrs(ctx, n.name, a)
	}
	if err == nil {
		n.recorded = a.Size
	}
	return err
}

// resize changes the size of the node's volume, bound like openDeviceFile.
func (n *Image) resize(ctx context.Context, rs volmap.Resizer, size int64) (int64, error) {
	if b, ok := n.root.drv.(volmap.ResizeBinder); ok && n.vol.ID != "" {
		return b.ResizeBound(ctx, n.name, n.vol.ID, size)
	}
	return rs.Resize(ctx, n.name, size)
}
