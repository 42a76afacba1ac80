package lvm

import (
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
