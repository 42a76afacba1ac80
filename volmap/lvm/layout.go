package lvm

import (
	"context"
	"fmt"
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

// Convert changes the layout of a file's LV in place with lvconvert
// (linear to raid1, more or fewer raid1 mirrors, raid1 back to linear,
// and the takeovers LVM knows). Requests the VG cannot satisfy are refused
// before anything changes; LVM's own refusals come back with its message.
func (d *Driver) Convert(ctx context.Context, name string, l volmap.Layout) error {
	lv, err := d.file(ctx, name)
	if err != nil {
		return err
	}
	if lv.Thin() {
		return fmt.Errorf("convert %s (%s/%s) to %s: a thin volume takes the layout of its pool %s: %w",
			name, d.cfg.VG, lv.Name, l, lv.Pool, volmap.ErrLayout)
	}
	if layoutOf(lv) == l {
		return nil
	}
	if err := l.Check(); err != nil {
		return fmt.Errorf("convert %s: %w", name, err)
	}
	_, all, err := d.pvsWithFree(ctx)
	if err != nil {
		return err
	}
	if all < l.PVs() {
		return fmt.Errorf("convert %s (%s/%s) to %s: it needs %d PVs, volume group %s has %d (vgextend adds PVs): %w",
			name, d.cfg.VG, lv.Name, l, l.PVs(), d.cfg.VG, all, volmap.ErrLayout)
	}
	ctx, cancel := context.WithTimeout(ctx, ConvertTimeout)
	defer cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.invalidate()
	args := append(layoutArgs(l), d.cfg.VG+"/"+lv.Name)
	if _, err := d.lvm.Run(ctx, "lvconvert", args...); err != nil {
		return fmt.Errorf("convert %s (%s/%s) from %s to %s: %w", name, d.cfg.VG, lv.Name, layoutOf(lv), l, err)
	}
	return nil
}
