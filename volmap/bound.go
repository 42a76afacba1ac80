package volmap

import (
	"context"
	"errors"
	"os"

	"github.com/volfs/volfs/meta"
)

// ErrChanged says a name no longer names the volume the caller listed: a
// --device symlink re-pointed at another device. The file the caller holds
// is stale (ESTALE); a new lookup finds the new volume, a different file.
var ErrChanged = errors.New("the name now names another volume")

// Binder is implemented by drivers in which a name can come to mean another
// volume without volfs renaming anything (a glob match is a path, and a
// symlink can be re-pointed). Callers pass the identity (Volume.ID) they
// listed the volume with; the driver refuses with ErrChanged when name is
// no longer that volume, so the mode and owner given to one device never
// grant access to another.
type Binder interface {
	OpenBound(ctx context.Context, name, id string, flag int) (*os.File, error)
	SetAttrsBound(ctx context.Context, name, id string, a meta.Attrs) error
}

// ResizeBinder is Resizer bound as Binder is: the resize is refused with
// ErrChanged when name is no longer the volume the caller listed as id.
type ResizeBinder interface {
	ResizeBound(ctx context.Context, name, id string, size int64) (int64, error)
}
