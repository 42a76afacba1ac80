package volmap

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/volfs/volfs/meta"
)

// ErrLayout is wrapped by every refusal of a layout: one that LVM's
// limits forbid, that the volume group cannot hold (too few PVs), or that
// the mount cannot give a file (thin volumes take their pool's layout).
var ErrLayout = errors.New("layout refused")

// Layout is how a volume's bytes are placed on the volume group's
// physical volumes, in LVM's terms: a segment type and its counts.
type Layout struct {
	// Type is "linear", "striped", "raid1", "raid5", "raid6" or
	// "raid10"; a volume read from the driver may have another (LVM's
	// segment type, "thin", "raid5_ls", ...).
	Type string
	// Mirrors is how many extra copies raid1 and raid10 keep (lvcreate
	// -m); 0 for the others.
	Mirrors int
	// Stripes is over how many PVs striped, raid5, raid6 and raid10 spread
	// the data (lvcreate -i; parity devices not counted); 0 for the
	// others.
	Stripes int
}

// LVM's limits (lvm2 lib/metadata/segtype.h and raid_manip.c): a RAID LV
// has at most 64 images, a striped one at most 128 stripes.
const (
	maxRAIDImages = 64
	maxStripes    = 128
)

// Layouts are the layouts a file can be given, in the order --layout
// lists them.
var Layouts = []string{"linear", "striped", "raid1", "raid5", "raid6", "raid10"}

// NewLayout fills in LVM's defaults for the counts left 0 (raid1 and
// raid10 keep one extra copy; striped, raid5 and raid10 use 2 stripes,
// raid6 3) and checks the result.
func NewLayout(typ string, mirrors, stripes int) (Layout, error) {
	l := Layout{Type: typ, Mirrors: mirrors, Stripes: stripes}
	switch typ {
	case "raid1", "raid10":
		if l.Mirrors == 0 {
			l.Mirrors = 1
		}
	}
	switch typ {
	case "striped", "raid5", "raid10":
		if l.Stripes == 0 {
			l.Stripes = 2
		}
	case "raid6":
		if l.Stripes == 0 {
			l.Stripes = 3
		}
	}
	return l, l.Check()
}

// ParseLayout reads the form String writes: the type, then key=value
// counts ("raid1 mirrors=1", "striped stripes=2", "raid10 stripes=2
// mirrors=1", "linear"). Counts left out take NewLayout's defaults.
func ParseLayout(s string) (Layout, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return Layout{}, fmt.Errorf("empty layout: want one of %s: %w", strings.Join(Layouts, ", "), ErrLayout)
	}
	var mirrors, stripes int
	seen := map[string]bool{}
	for _, kv := range f[1:] {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 0 || seen[k] {
			return Layout{}, fmt.Errorf("layout %q: %q: want mirrors=N or stripes=N, each once: %w", s, kv, ErrLayout)
		}
		seen[k] = true
		switch k {
		case "mirrors":
			mirrors = n
		case "stripes":
			stripes = n
		default:
			return Layout{}, fmt.Errorf("layout %q: unknown %q: want mirrors=N or stripes=N: %w", s, k, ErrLayout)
		}
	}
	return NewLayout(f[0], mirrors, stripes)
}

// Check applies LVM's limits for creating a volume of this layout.
func (l Layout) Check() error {
	bad := func(why string) error { return fmt.Errorf("layout %q: %s: %w", l, why, ErrLayout) }
	switch l.Type {
	case "linear":
		if l.Mirrors != 0 || l.Stripes > 1 {
			return bad("linear takes no mirrors or stripes (use raid1 or striped)")
		}
	case "striped":
		if l.Mirrors != 0 {
			return bad("striped keeps no mirrors (use raid10)")
		}
		if l.Stripes < 2 || l.Stripes > maxStripes {
			return bad(fmt.Sprintf("striped needs 2 to %d stripes", maxStripes))
		}
	case "raid1":
		if l.Stripes > 1 {
			return bad("raid1 is not striped (use raid10)")
		}
		if l.Mirrors < 1 || l.Mirrors > maxRAIDImages-1 {
			return bad(fmt.Sprintf("raid1 needs 1 to %d mirrors", maxRAIDImages-1))
		}
	case "raid5", "raid6":
		min, parity := 2, 1
		if l.Type == "raid6" {
			min, parity = 3, 2
		}
		if l.Mirrors != 0 {
			return bad(l.Type + " keeps parity, not mirrors")
		}
		if l.Stripes < min || l.Stripes+parity > maxRAIDImages {
			return bad(fmt.Sprintf("%s needs %d to %d stripes", l.Type, min, maxRAIDImages-parity))
		}
	case "raid10":
		if l.Mirrors < 1 || l.Stripes < 2 || l.Stripes*(l.Mirrors+1) > maxRAIDImages {
			return bad(fmt.Sprintf("raid10 needs 2 or more stripes and 1 or more mirrors, at most %d images", maxRAIDImages))
		}
	case "":
		return bad("no type: want one of " + strings.Join(Layouts, ", "))
	default:
		return bad("unknown type: want one of " + strings.Join(Layouts, ", "))
	}
	return nil
}

// PVs is how many PVs with free space a volume of this layout needs: one
// per image (LVM puts no two images of a RAID or stripes of a striped
// volume on one PV).
func (l Layout) PVs() int {
	switch l.Type {
	case "striped":
		return l.Stripes
	case "raid1":
		return l.Mirrors + 1
	case "raid5":
		return l.Stripes + 1
	case "raid6":
		return l.Stripes + 2
	case "raid10":
		return l.Stripes * (l.Mirrors + 1)
	}
	return 1
}

// String is the form ParseLayout reads and trusted.volfs.layout holds.
func (l Layout) String() string {
	s := l.Type
	if s == "" {
		s = "unknown"
	}
	if l.Stripes > 0 {
		s += " stripes=" + strconv.Itoa(l.Stripes)
	}
	if l.Mirrors > 0 {
		s += " mirrors=" + strconv.Itoa(l.Mirrors)
	}
	return s
}

// Layouter is implemented by drivers whose volumes can be given a layout:
// at creation, or by converting a volume in place.
type Layouter interface {
	// DefaultLayout is the layout Creator.Create gives a new volume.
	DefaultLayout() Layout
	// CheckLayout refuses (wrapping ErrLayout) a layout that the driver
	// cannot give a new volume now, without changing anything.
	CheckLayout(ctx context.Context, l Layout) error
	// CreateLayout is Creator.Create with a layout instead of the mount's
	// default.
	CreateLayout(ctx context.Context, name string, size int64, a meta.Attrs, l Layout) (Volume, error)
	// Convert changes an existing volume's layout in place, its data kept
	// (the new copies or parity are built in the background).
	Convert(ctx context.Context, name string, l Layout) error
}
