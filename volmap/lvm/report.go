package lvm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// lvFields are the lvs columns the driver reads.
const lvFields = "lv_name,lv_uuid,lv_size,lv_attr,lv_tags,pool_lv,data_percent,lv_role,lv_layout," +
	"segtype,lv_dm_path,lv_active,lv_skip_activation,lv_kernel_major,lv_kernel_minor,chunk_size,discards,zero,lv_time," +
	"vg_missing_pv_count,stripes,data_stripes,lv_health_status,sync_percent,lv_lockargs,origin"

// vgFields are the vgs columns the driver reads.
const vgFields = "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_lock_type,vg_mda_size,vg_mda_free"

// LV is one row of an lvs report.
type LV struct {
	Name string // as LVM spells it; "[x]" for hidden LVs (lvs -a)
	UUID string
	Size int64  // bytes
	Attr string // lv_attr, 10 characters
	Tags []string
	Pool string // pool_lv: the thin pool of a thin LV
	// DataPercent is the allocated share of a thin LV or pool (0-100), -1
	// when LVM does not report it (linear LVs, inactive thin LVs).
	DataPercent float64
	Role        []string // lv_role: "public", "private", "thin", "snapshot", ...
	Layout      []string // lv_layout: "linear", "thin", "sparse", "pool", ...
	SegType     string   // "linear", "thin", "thin-pool", "striped", ...
	DMPath      string   // /dev/mapper/VG-LV
	// Active is true when the LV's device exists (lv_attr state 'a').
	Active bool
	// SkipActivation is LVM's activation-skip flag (thin snapshots): plain
	// "lvchange -ay" ignores such an LV, "-K" activates it.
	SkipActivation bool
	// KernelMajor and KernelMinor are the device numbers, -1 if inactive.
	KernelMajor, KernelMinor int64
	// ChunkSize is a thin pool's allocation unit in bytes (0 otherwise).
	ChunkSize int64
	// Discards is a thin pool's discard mode: "passdown", "nopassdown" or
	// "ignore" (a pool that ignores discards never unmaps).
	Discards string
	// Origin is the LV a snapshot was taken of ("" for none). A thin LV
	// whose origin is not a thin LV of its own pool has an external
	// origin: its unmapped chunks read the origin, not zeros.
	Origin string
	// ZeroesNew is a thin pool's zeroing of newly provisioned chunks
	// (lvcreate -Zy, the default). Without it a partial write into a new
	// chunk leaves the rest of the chunk as the disk held it.
	ZeroesNew bool
	// Created is lv_time, when the LV was created (zero if not reported
	// or not understood).
	Created time.Time
	// VGMissingPVs is how many PVs of the LV's VG the command did not
	// see (vg_missing_pv_count).
	VGMissingPVs int64
	// Stripes is LVM's count of the segment's images (a striped LV's
	// stripes, a RAID LV's images with parity and copies); DataStripes
	// the ones that hold distinct data (0 when not reported).
	Stripes, DataStripes int64
	// Health is lv_health_status: "" when healthy, else "partial",
	// "refresh needed", "mismatches exist"...
	Health string
	// SyncPercent is how far a RAID LV's images are in sync (0-100), -1
	// where it does not apply (not RAID, inactive).
	SyncPercent float64
	// LockArgs is lv_lockargs: on a sanlock VG "VERSION:OFFSET", where
	// the LV's lease lies in the VG's lvmlock LV (empty elsewhere).
	LockArgs string
}

// lvTimeLayout is lvm2's default report/time_format ("%Y-%m-%d %T %z").
const lvTimeLayout = "2006-01-02 15:04:05 -0700"

// Hidden reports whether the LV is one LVM hides (lvs -a shows it in
// brackets: pool data and metadata, mirror images, spare...).
func (lv LV) Hidden() bool { return strings.HasPrefix(lv.Name, "[") }

// Public reports whether LVM considers the LV a user volume (lv_role
// "public"; pools are "private").
func (lv LV) Public() bool { return slices.Contains(lv.Role, "public") && !lv.Hidden() }

// Thin reports whether the LV is a thin volume (not a pool).
func (lv LV) Thin() bool { return lv.SegType == "thin" }

// DeviceOpen reports whether the LV's device is open on this host (lv_attr
// character 6 'o': some process, mount or device holds it).
func (lv LV) DeviceOpen() bool { return len(lv.Attr) > 5 && lv.Attr[5] == 'o' }

// VG is one row of a vgs report.
type VG struct {
	Name       string
	UUID       string
	Size       int64
	Free       int64
	ExtentSize int64
	// LockType is vg_lock_type: "sanlock" or "dlm" for a VG shared
	// between hosts through lvmlockd, empty for a local VG.
	LockType string
	// MdaSize and MdaFree are the size of the VG's smallest metadata
	// area and the room left in it for the metadata text (-1 when not
	// reported).
	MdaSize, MdaFree int64
}

// ParseLVs parses the JSON of "lvs --reportformat json --units b
// --nosuffix". Fields missing from the report are left zero (-1 for the
// kernel numbers and DataPercent).
func ParseLVs(data []byte) ([]LV, error) {
	rows, err := parseRows(data, "lv")
	if err != nil {
		return nil, err
	}
	lvs := make([]LV, 0, len(rows))
	for i, r := range rows {
		p := rowParser{row: r}
		lv := LV{
			Name:           p.str("lv_name"),
			UUID:           p.str("lv_uuid"),
			Size:           p.int("lv_size", 0),
			Attr:           p.str("lv_attr"),
			Tags:           p.list("lv_tags"),
			Pool:           p.str("pool_lv"),
			DataPercent:    p.percent("data_percent"),
			Role:           p.list("lv_role"),
			Layout:         p.list("lv_layout"),
			SegType:        p.str("segtype"),
			DMPath:         p.str("lv_dm_path"),
			SkipActivation: p.str("lv_skip_activation") != "",
			KernelMajor:    p.int("lv_kernel_major", -1),
			KernelMinor:    p.int("lv_kernel_minor", -1),
			ChunkSize:      p.int("chunk_size", 0),
			Discards:       p.str("discards"),
			ZeroesNew:      p.str("zero") != "",
			Origin:         p.str("origin"),
			VGMissingPVs:   p.int("vg_missing_pv_count", 0),
			Stripes:        p.int("stripes", 0),
			DataStripes:    p.int("data_stripes", 0),
			Health:         p.str("lv_health_status"),
			SyncPercent:    p.percent("sync_percent"),
			LockArgs:       p.str("lv_lockargs"),
		}
		if t, err := time.Parse(lvTimeLayout, p.str("lv_time")); err == nil {
			lv.Created = t
		}
		if len(lv.Attr) >= 5 {
			lv.Active = lv.Attr[4] == 'a'
		} else {
			lv.Active = p.str("lv_active") == "active"
		}
		if len(lv.Attr) >= 10 && lv.Attr[9] == 'k' {
			lv.SkipActivation = true
		}
		if p.err != nil {
			return nil, fmt.Errorf("lvs report, row %d (%q): %w", i, lv.Name, p.err)
		}
		if lv.Name == "" {
			return nil, fmt.Errorf("lvs report, row %d: no lv_name", i)
		}
		if lv.Size < 0 {
			return nil, fmt.Errorf("lvs report, row %d (%q): negative lv_size", i, lv.Name)
		}
		lvs = append(lvs, lv)
	}
	return lvs, nil
}

// ParseVGs parses the JSON of "vgs --reportformat json --units b
// --nosuffix".
func ParseVGs(data []byte) ([]VG, error) {
	rows, err := parseRows(data, "vg")
	if err != nil {
		return nil, err
	}
	vgs := make([]VG, 0, len(rows))
	for i, r := range rows {
		p := rowParser{row: r}
		vg := VG{
			Name:       p.str("vg_name"),
			UUID:       p.str("vg_uuid"),
			Size:       p.int("vg_size", 0),
			Free:       p.int("vg_free", 0),
			ExtentSize: p.int("vg_extent_size", 0),
			LockType:   p.str("vg_lock_type"),
			MdaSize:    p.int("vg_mda_size", -1),
			MdaFree:    p.int("vg_mda_free", -1),
		}
		if p.err != nil {
			return nil, fmt.Errorf("vgs report, row %d (%q): %w", i, vg.Name, p.err)
		}
		if vg.Name == "" || vg.Size < 0 || vg.Free < 0 || vg.ExtentSize < 0 {
			return nil, fmt.Errorf("vgs report, row %d: bad row %+v", i, vg)
		}
		vgs = append(vgs, vg)
	}
	return vgs, nil
}

// parseRows returns the rows of every "kind" table of an lvm JSON report:
// {"report": [{"lv": [{...}, ...]}, ...]}. lvm2 >= 2.03.17 may also add a
// "log" section, which is ignored.
func parseRows(data []byte, kind string) ([]map[string]json.RawMessage, error) {
	var rep struct {
		Report []map[string][]map[string]json.RawMessage `json:"report"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&rep); err != nil {
		return nil, fmt.Errorf("parse lvm JSON report: %w", err)
	}
	if rep.Report == nil {
		return nil, fmt.Errorf("parse lvm JSON report: no \"report\" section")
	}
	var rows []map[string]json.RawMessage
	for _, r := range rep.Report {
		rows = append(rows, r[kind]...)
	}
	return rows, nil
}

// rowParser reads fields of one report row, remembering the first error.
// lvm2 writes every value as a JSON string ("4194304"); --reportformat
// json_std writes numbers as numbers; both are accepted.
type rowParser struct {
	row map[string]json.RawMessage
	err error
}

func (p *rowParser) fail(field string, raw json.RawMessage, why string) {
	if p.err == nil {
		p.err = fmt.Errorf("field %s = %.40s: %s", field, raw, why)
	}
}

func (p *rowParser) str(field string) string {
	raw, ok := p.row[field]
	if !ok || string(raw) == "null" {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		return n.String()
	}
	p.fail(field, raw, "not a string or a number")
	return ""
}

func (p *rowParser) int(field string, empty int64) int64 {
	s := strings.TrimSpace(p.str(field))
	if s == "" {
		return empty
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		// "--units b" sizes are integers; tolerate "123.00".
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || f != f || f < -1<<63 || f >= 1<<63 {
			p.fail(field, p.row[field], "not an integer")
			return empty
		}
		n = int64(f)
	}
	return n
}

func (p *rowParser) percent(field string) float64 {
	s := strings.TrimSpace(p.str(field))
	if s == "" {
		return -1
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != f {
		p.fail(field, p.row[field], "not a percentage")
		return -1
	}
	return min(max(f, 0), 100)
}

// list splits a comma-separated field ("public,origin", tags). Tags cannot
// contain commas.
func (p *rowParser) list(field string) []string {
	s := p.str(field)
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
