package lvm

import (
	"bytes"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/volfs/volfs/volmap"
)

// thinDumpXML is thin_dump 0.9's output for a pool with two thin devices
// (64 KiB chunks).
const thinDumpXML = `<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="16384">
  <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
    <single_mapping origin_block="2" data_block="9" time="1"/>
    <single_mapping origin_block="100" data_block="10" time="1"/>
    <range_mapping origin_begin="160000" data_begin="11" length="2" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="1" transaction="1" creation_time="1" snap_time="1">
    <single_mapping origin_block="7" data_block="3" time="1"/>
  </device>
</superblock>
`

func TestParseThinDump(t *testing.T) {
	const c = 64 << 10
	got, err := parseThinDump(strings.NewReader(thinDumpXML), 1)
	if err != nil {
		t.Fatal(err)
	}
	want := []volmap.Extent{{Off: 0, Len: 3 * c}, {Off: 100 * c, Len: c}, {Off: 160000 * c, Len: 2 * c}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("device 1: %v, want %v", got, want)
	}
	if got, err = parseThinDump(strings.NewReader(thinDumpXML), 2); err != nil || !reflect.DeepEqual(got, []volmap.Extent{{Off: 7 * c, Len: c}}) {
		t.Fatalf("device 2: %v, %v", got, err)
	}
	if _, err := parseThinDump(strings.NewReader(thinDumpXML), 3); err == nil {
		t.Fatal("a missing device is not an empty mapping")
	}
	for _, bad := range []string{
		`<superblock data_block_size="0"><device dev_id="1"/></superblock>`,
		`<superblock data_block_size="128"><device dev_id="1"><single_mapping origin_block="x"/></device></superblock>`,
		`<superblock data_block_size="128"><device dev_id="1"><range_mapping origin_begin="1"/></device></superblock>`,
		`<superblock data_block_size="128"><device dev_id="1">`,
	} {
		if ext, err := parseThinDump(strings.NewReader(bad), 1); err == nil {
			t.Errorf("%s: no error (%v)", bad, ext)
		}
	}
	if got := clipExtents(want, 100*c+10); !reflect.DeepEqual(got, []volmap.Extent{{Off: 0, Len: 3 * c}, {Off: 100 * c, Len: 10}}) {
		t.Fatalf("clipped: %v", got)
	}
}

func TestParseTables(t *testing.T) {
	for _, tc := range []struct {
		table string
		ok    bool
		want  thinTable
	}{
		{"0 20971520 thin 253:4 1\n", true, thinTable{devNum{253, 4}, 1}},
		{"0 20971520 thin 253:4 17 253:9\n", false, thinTable{}}, // external origin
		{"0 8192 linear 8:16 2048\n", false, thinTable{}},
		{"0 8192 thin 253:4 1\n8192 8192 thin 253:4 1\n", false, thinTable{}},
	} {
		got, ok := parseThinTable(tc.table)
		if ok != tc.ok || got != tc.want {
			t.Errorf("%q: %v %v", tc.table, got, ok)
		}
	}
	p, ok := parsePoolTable("0 4194304 thin-pool 253:1 253:2 128 0 1 error_if_no_space\n")
	if !ok || p.metaDev != (devNum{253, 1}) {
		t.Fatalf("pool table: %v %v", p, ok)
	}
	if _, ok := parsePoolTable("0 4194304 linear 253:1 0\n"); ok {
		t.Fatal("a linear table is not a pool")
	}
}

func TestSortMerge(t *testing.T) {
	got := sortMerge([]volmap.Extent{{Off: 10, Len: 5}, {Off: 0, Len: 4}, {Off: 4, Len: 2}, {Off: 12, Len: 10}, {Off: 30, Len: 1}})
	want := []volmap.Extent{{Off: 0, Len: 6}, {Off: 10, Len: 12}, {Off: 30, Len: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%v, want %v", got, want)
	}
}

// FuzzThinDump parses arbitrary thin_dump output: no panic, and what it
// accepts is what SEEK_DATA may answer: sorted, disjoint, non-adjacent,
// non-empty extents within the int64 range.
func FuzzThinDump(f *testing.F) {
	f.Add([]byte(thinDumpXML), uint64(1))
	f.Add([]byte(thinDumpXML), uint64(2))
	f.Add([]byte(`<superblock data_block_size="128"><device dev_id="1"><range_mapping origin_begin="72057594037927935" length="1"/></device></superblock>`), uint64(1))
	f.Add([]byte(`<superblock data_block_size="128"><device dev_id="1"><range_mapping origin_begin="3" length="0"/></device></superblock>`), uint64(1))
	f.Fuzz(func(t *testing.T, data []byte, devID uint64) {
		ext, err := parseThinDump(bytes.NewReader(data), devID)
		if err != nil {
			return
		}
		for i, e := range ext {
			if e.Off < 0 || e.Len <= 0 || e.Off > math.MaxInt64-e.Len || i > 0 && e.Off <= ext[i-1].Off+ext[i-1].Len {
				t.Fatalf("extents %v from %q", ext, data)
			}
		}
	})
}

// FuzzTables parses arbitrary device-mapper tables (dmsetup table): no
// panic, and what parses prints back, as dmsetup would, to the same.
func FuzzTables(f *testing.F) {
	for _, s := range []string{"0 20971520 thin 253:4 1\n", "0 20971520 thin 253:4 17 253:9\n", "0 8192 linear 8:16 2048\n",
		"0 4194304 thin-pool 253:1 253:2 128 0 1 error_if_no_space\n", "0 1 thin 4294967296:0 1", "0 1 thin -1:+2 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, table string) {
		if tt, ok := parseThinTable(table); ok {
			again := fmt.Sprintf("0 %s thin %d:%d %d\n", strings.Fields(table)[1], tt.poolDev.major, tt.poolDev.minor, tt.devID)
			if tt2, ok := parseThinTable(again); !ok || tt2 != tt {
				t.Fatalf("%q: %v, printed %q: %v %v", table, tt, again, tt2, ok)
			}
		}
		if pt, ok := parsePoolTable(table); ok {
			fl := strings.Fields(table)
			fl[3] = fmt.Sprintf("%d:%d", pt.metaDev.major, pt.metaDev.minor)
			if pt2, ok := parsePoolTable(strings.Join(fl, " ")); !ok || pt2 != pt {
				t.Fatalf("%q: %v, printed: %v %v", table, pt, pt2, ok)
			}
		}
	})
}
