package lvm

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/volmap"
)

var _ volmap.Layouter = (*Driver)(nil)

// ConvertTimeout bounds one lvconvert: the conversion itself is quick (the
// new images sync in the background), but it suspends the LV.
const ConvertTimeout = 5 * time.Minute

// layoutOf reads an LV's layout from its segment type and image counts.
// Thin LVs and segment types volfs does not create keep LVM's name.
func layoutOf(lv LV) volmap.Layout {
	l := volmap.Layout{Type: lv.SegType}
	images := int(lv.Stripes)
	data := int(lv.DataStripes)
	switch {
	case lv.SegType == "linear":
	case lv.SegType == "striped":
		if images <= 1 {
			l.Type = "linear"
		} else {
			l.Stripes = images
		}
	case lv.SegType == "raid1":
		l.Mirrors = max(images-1, 0)
	case strings.HasPrefix(lv.SegType, "raid5") || strings.HasPrefix(lv.SegType, "raid4"):
		l.Type = lv.SegType[:5]
		l.Stripes = max(images-1, 0)
	case strings.HasPrefix(lv.SegType, "raid6"):
		l.Type = "raid6"
		l.Stripes = max(images-2, 0)
	case lv.SegType == "raid10":
		l.Stripes = max(images/2, 1)
		if data > 0 && data < images {
			l.Stripes = data
		}
		l.Mirrors = max(images/max(l.Stripes, 1)-1, 1)
	}
	return l
}

// layoutArgs are lvcreate's (and lvconvert's) options for l.
func layoutArgs(l volmap.Layout) []string {
	switch l.Type {
	case "", "linear":
		return []string{"--type", "linear"}
	case "striped":
		return []string{"--type", "striped", "-i", strconv.Itoa(l.Stripes)}
	case "raid1":
		return []string{"--type", "raid1", "-m", strconv.Itoa(l.Mirrors)}
	case "raid10":
		return []string{"--type", "raid10", "-i", strconv.Itoa(l.Stripes), "-m", strconv.Itoa(l.Mirrors)}
	}
	return []string{"--type", l.Type, "-i", strconv.Itoa(l.Stripes)}
}

// health says how an LV is: "ok", or LVM's lv_health_status, and whether
// a RAID LV runs without one of its images (LVM says "partial" when a PV
// is missing, "refresh needed" when the kernel failed an image).
func health(lv LV) (string, bool) {
	h := lv.Health
	if h == "" && len(lv.Attr) >= 9 {
		switch lv.Attr[8] {
		case 'p':
			h = "partial"
		case 'r':
			h = "refresh needed"
		case 'm':
			h = "mismatches exist"
		}
	}
	if h == "" {
		return "ok", false
	}
	degraded := h == "partial" || h == "refresh needed"
	if degraded {
		h = "degraded (" + h + ")"
	}
	return h, degraded
}

// noteHealth logs a warning when a file's RAID LV is first seen degraded
// (in any listing: volfs ls, status, a metrics scrape, lookups), again if
// how it is degraded changes, and a notice when it is whole again.
func (d *Driver) noteHealth(rows []LV) {
	d.healthMu.Lock()
	defer d.healthMu.Unlock()
	seen := map[string]bool{}
	for _, lv := range rows {
		file, ok := d.fileName(lv)
		if !ok {
			continue
		}
		h, degraded := health(lv)
		was, wasDegraded := d.degraded[lv.UUID]
		switch {
		case degraded && h != was:
			if d.degraded == nil {
				d.degraded = map[string]string{}
			}
			d.degraded[lv.UUID] = h
			d.log.Warn("RAID volume is degraded: reads and writes go on with the images left; repair it "+
				"(lvconvert --repair, or lvchange --refresh once the device is back)",
				slog.String("volume", file), slog.String("lv", d.cfg.VG+"/"+lv.Name),
				slog.String("layout", layoutOf(lv).String()), slog.String("health", h))
		case !degraded && wasDegraded:
			d.log.Info("RAID volume is no longer degraded", slog.String("volume", file),
				slog.String("lv", d.cfg.VG+"/"+lv.Name), slog.String("health", h))
		}
		if degraded {
			seen[lv.UUID] = true
		}
	}
	for id := range d.degraded {
		if !seen[id] {
			delete(d.degraded, id)
		}
	}
}

// DefaultLayout is the layout Create gives: Config.Layout, linear when
// unset, "thin" on a thin mount.
func (d *Driver) DefaultLayout() volmap.Layout {
	switch {
	case d.cfg.ThinPool != "":
		return volmap.Layout{Type: "thin"}
	case d.cfg.Layout.Type == "":
		return volmap.Layout{Type: "linear"}
	}
	return d.cfg.Layout
}

// checkLayoutConfig refuses a mount default layout the driver cannot use.
func (d *Driver) checkLayoutConfig(ctx context.Context) error {
	l := d.cfg.Layout
	if l.Type == "" || l.Type == "linear" && l.Mirrors == 0 && l.Stripes <= 1 {
		return nil
	}
	if d.cfg.ThinPool != "" {
		return fmt.Errorf("--layout %s with --thin-pool %s: thin volumes take the layout of their pool "+
			"(give the pool's data a RAID layout with lvconvert --type raid1 -m 1 %s/%s_tdata): %w",
			l, d.cfg.ThinPool, d.cfg.VG, d.cfg.ThinPool, volmap.ErrLayout)
	}
	return d.CheckLayout(ctx, l)
}

// CheckLayout refuses a layout LVM's limits forbid, one that a thin mount
// cannot give a file, and one that needs more PVs with free space than
// the VG has (LVM places no two images of a RAID or striped LV on one PV).
func (d *Driver) CheckLayout(ctx context.Context, l volmap.Layout) error {
	if err := l.Check(); err != nil {
		return err
	}
	if d.cfg.ThinPool != "" && l.Type != "linear" {
		return fmt.Errorf("layout %s: files of this mount are thin volumes in %s/%s and take the pool's layout: %w",
			l, d.cfg.VG, d.cfg.ThinPool, volmap.ErrLayout)
	}
	if l.PVs() <= 1 {
		return nil
	}
	free, all, err := d.pvsWithFree(ctx)
	if err != nil {
		return err
	}
	if free < l.PVs() {
		return fmt.Errorf("layout %s needs %d PVs with free space, volume group %s has %d (of %d PVs; vgextend adds PVs): %w",
			l, l.PVs(), d.cfg.VG, free, all, volmap.ErrLayout)
	}
	return nil
}

// pvsWithFree counts the VG's PVs that have free extents, and all of them.
func (d *Driver) pvsWithFree(ctx context.Context) (free, all int, err error) {
	out, err := d.lvm.Report(ctx, "pvs", "pv_name,vg_name,pv_free,pv_attr")
	if err != nil {
		return 0, 0, fmt.Errorf("PVs of %s: %w", d.cfg.VG, err)
	}
	rows, err := parseRows(out, "pv")
	if err != nil {
		return 0, 0, err
	}
	for _, r := range rows {
		p := rowParser{row: r}
		if p.str("vg_name") != d.cfg.VG {
			continue
		}
		all++
		// pv_attr "a--": allocatable; a missing PV has 'm' third.
		attr := p.str("pv_attr")
		if p.int("pv_free", 0) >= d.extent && strings.HasPrefix(attr, "a") && !strings.HasSuffix(attr, "m") {
			free++
		}
	}
	return free, all, nil
}

// CreateLayout is Create with layout l instead of the mount's default.
func (d *Driver) CreateLayout(ctx context.Context, name string, size int64, a meta.Attrs, l volmap.Layout) (volmap.Volume, error) {
	if err := d.CheckLayout(ctx, l); err != nil {
		return volmap.Volume{}, fmt.Errorf("create %s: %w", name, err)
	}
	return d.create(ctx, name, size, a, l)
}

// convertPlan is how one lvconvert changes an LV from one layout to
// another: its options, and the new images it allocates (how many, and
// how many bytes each needs on a PV the LV does not use yet). A change
// that LVM cannot make in one step is refused with the reason.
type convertPlan struct {
	args      []string
	newImages int
	imageSize int64
}

// planConvert follows LVM's takeover matrix (lvmraid(7), RAID TAKEOVER):
// linear <-> raid1, raid1 with more or fewer mirrors, and striped <->
// raid5/raid6 with the same stripes (through raid5_n and raid6_n_6, the
// types whose parity sits on its own images). Everything else LVM does
// only in several steps, some of which restripe or grow the LV.
func planConvert(lv LV, from, to volmap.Layout, extent int64) (convertPlan, error) {
	size := (lv.Size + extent - 1) / extent * extent
	perStripe := func(n int) int64 { return (size/int64(n) + extent - 1) / extent * extent }
	switch {
	case from.Type == "linear" && to.Type == "raid1":
		return convertPlan{args: layoutArgs(to), newImages: to.Mirrors, imageSize: size}, nil
	case from.Type == "raid1" && to.Type == "raid1":
		return convertPlan{args: layoutArgs(to), newImages: max(to.Mirrors-from.Mirrors, 0), imageSize: size}, nil
	case from.Type == "raid1" && to.Type == "linear":
		return convertPlan{args: layoutArgs(to)}, nil
	case from.Type == "striped" && (to.Type == "raid5" || to.Type == "raid6") && to.Stripes == from.Stripes:
		return convertPlan{args: []string{"--type", parityOwn(to.Type)}, newImages: to.PVs() - to.Stripes,
			imageSize: perStripe(from.Stripes)}, nil
	case (from.Type == "raid5" || from.Type == "raid6") && to.Type == "striped" && to.Stripes == from.Stripes:
		if n := parityOwn(from.Type); lv.SegType != n {
			return convertPlan{}, fmt.Errorf("LVM takes only raid5_n and raid6_n_6 (parity on its own images) "+
				"back to striped, and this LV is %s: run lvconvert --type %s on it first (a reshape that "+
				"moves the parity)", lv.SegType, n)
		}
		return convertPlan{args: []string{"--type", "striped"}}, nil
	case from.Type == "linear" && to.Type == "striped", from.Type == "striped" && to.Type == "linear":
		return convertPlan{}, fmt.Errorf("LVM converts between linear and striped only in four steps through " +
			"raid1 and raid5_n, restriping the data and growing the LV (lvmraid(7), Indirect conversions)")
	case from.Type == to.Type:
		return convertPlan{}, fmt.Errorf("changing the stripes of a %s LV is a reshape (lvconvert --stripes) "+
			"that moves all data and grows the LV; volfs does not start one", from.Type)
	}
	return convertPlan{}, fmt.Errorf("LVM has no one-step conversion from %s to %s (volfs converts linear <-> "+
		"raid1, raid1 mirror counts, and striped <-> raid5/raid6 with the same stripes; lvmraid(7), RAID "+
		"TAKEOVER, lists the rest)", from.Type, to.Type)
}

// parityOwn is the variant of raid5 or raid6 whose parity has images of
// its own (the last ones), the one LVM converts to and from striped.
func parityOwn(typ string) string {
	if typ == "raid6" {
		return "raid6_n_6"
	}
	return "raid5_n"
}

// Convert changes the layout of a file's LV in place with one lvconvert
// (planConvert says which changes). Requests that LVM cannot do in one
// step, or that the VG has no room for (a PV the LV does not use, with
// enough free space, for every new image), are refused before anything
// changes; LVM's own refusals come back with its message. The driver's
// lock is held only while lvconvert runs: the new images sync in the
// background, in the kernel.
func (d *Driver) Convert(ctx context.Context, name string, l volmap.Layout) error {
	lv, err := d.file(ctx, name)
	if err != nil {
		return err
	}
	if lv.Thin() {
		return fmt.Errorf("convert %s (%s/%s) to %s: a thin volume takes the layout of its pool %s: %w",
			name, d.cfg.VG, lv.Name, l, lv.Pool, volmap.ErrLayout)
	}
	from := layoutOf(lv)
	if from == l {
		return nil
	}
	if err := l.Check(); err != nil {
		return fmt.Errorf("convert %s: %w", name, err)
	}
	refuse := func(why string) error {
		return fmt.Errorf("convert %s (%s/%s) from %s to %s: %s; to get this layout, make a new file with it "+
			"(%s before its first write) and copy the image into it: %w",
			name, d.cfg.VG, lv.Name, from, l, why, meta.LayoutXattr, volmap.ErrLayout)
	}
	plan, err := planConvert(lv, from, l, d.extent)
	if err != nil {
		return refuse(err.Error())
	}
	if plan.newImages > 0 {
		if why, err := d.roomForImages(ctx, lv, plan.newImages, plan.imageSize); err != nil {
			return err
		} else if why != "" {
			return fmt.Errorf("convert %s (%s/%s) from %s to %s: %s: %w",
				name, d.cfg.VG, lv.Name, from, l, why, volmap.ErrLayout)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, ConvertTimeout)
	defer cancel()
	if err := d.lvconvert(ctx, append(plan.args, d.cfg.VG+"/"+lv.Name)); err != nil {
		return fmt.Errorf("convert %s (%s/%s) from %s to %s: %w", name, d.cfg.VG, lv.Name, from, l, err)
	}
	after, err := d.file(ctx, name)
	if err != nil {
		return fmt.Errorf("convert %s (%s/%s) from %s to %s: read it back: %w", name, d.cfg.VG, lv.Name, from, l, err)
	}
	if got := layoutOf(after); got != l {
		// LVM made an interim step ("Repeat this command"): say where
		// the LV stands instead of claiming success.
		return fmt.Errorf("convert %s (%s/%s) from %s to %s: LVM made it %s (%s), an interim step: %w",
			name, d.cfg.VG, lv.Name, from, l, got, after.SegType, volmap.ErrLayout)
	}
	return nil
}

// lvconvert runs one lvconvert under the driver's lock.
func (d *Driver) lvconvert(ctx context.Context, args []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.invalidate()
	_, err := d.lvm.Run(ctx, "lvconvert", args...)
	return err
}

// roomForImages says why the VG cannot hold n new images of size bytes
// for lv ("" when it can): LVM puts each on a PV that holds no other image
// of the LV, with room for the image and its one-extent metadata LV.
func (d *Driver) roomForImages(ctx context.Context, lv LV, n int, size int64) (string, error) {
	used, err := d.pvsOf(ctx, lv.Name)
	if err != nil {
		return "", err
	}
	out, err := d.lvm.Report(ctx, "pvs", "pv_name,vg_name,pv_free,pv_attr")
	if err != nil {
		return "", fmt.Errorf("PVs of %s: %w", d.cfg.VG, err)
	}
	rows, err := parseRows(out, "pv")
	if err != nil {
		return "", err
	}
	need := size + d.extent
	fit := 0
	var seen []string
	for _, r := range rows {
		p := rowParser{row: r}
		if p.str("vg_name") != d.cfg.VG {
			continue
		}
		pv, free, attr := p.str("pv_name"), p.int("pv_free", 0), p.str("pv_attr")
		switch {
		case used[pv]:
			seen = append(seen, pv+" (holds it)")
		case !strings.HasPrefix(attr, "a") || strings.HasSuffix(attr, "m"):
			seen = append(seen, pv+" (missing or not allocatable)")
		case free < need:
			seen = append(seen, fmt.Sprintf("%s (%d MiB free)", pv, free>>20))
		default:
			fit++
		}
	}
	if fit >= n {
		return "", nil
	}
	return fmt.Sprintf("it needs %d more PV(s) with %d MiB free each (an image and its metadata; LVM puts no two "+
		"images of one LV on the same PV), and volume group %s has %d: %s; free space on another PV "+
		"(lvremove, pvmove) or add one (vgextend)", n, need>>20, d.cfg.VG, fit, strings.Join(seen, ", ")), nil
}

// pvsOf returns the PVs that hold an LV's extents, its RAID images' and
// metadata LVs' included.
func (d *Driver) pvsOf(ctx context.Context, lvName string) (map[string]bool, error) {
	out, err := d.lvm.Report(ctx, "lvs", "lv_name,devices", "-a", d.cfg.VG)
	if err != nil {
		return nil, fmt.Errorf("devices of %s/%s: %w", d.cfg.VG, lvName, err)
	}
	rows, err := parseRows(out, "lv")
	if err != nil {
		return nil, err
	}
	return devicesOf(rows, lvName), nil
}

// devicesOf walks lvs rows of lv_name,devices (one per segment) from LV
// name down to PVs ("/dev/..."): a RAID LV's devices are its sub-LVs.
func devicesOf(rows []map[string]json.RawMessage, name string) map[string]bool {
	devs := map[string][]string{}
	for _, r := range rows {
		p := rowParser{row: r}
		n := strings.Trim(p.str("lv_name"), "[]")
		for _, dev := range strings.Split(p.str("devices"), ",") {
			dev, _, _ = strings.Cut(dev, "(")
			if dev != "" {
				devs[n] = append(devs[n], dev)
			}
		}
	}
	pvs := map[string]bool{}
	var walk func(n string, depth int)
	walk = func(n string, depth int) {
		for _, dev := range devs[n] {
			if strings.HasPrefix(dev, "/dev/") {
				pvs[dev] = true
			} else if depth < 4 {
				walk(strings.Trim(dev, "[]"), depth+1)
			}
		}
	}
	walk(name, 0)
	// The metadata LVs (name_rmeta_N) are not in the top LV's devices.
	for n := range devs {
		if strings.HasPrefix(n, name+"_rmeta_") {
			walk(n, 1)
		}
	}
	return pvs
}
