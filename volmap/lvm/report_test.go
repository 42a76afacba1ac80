package lvm

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseLVs(t *testing.T) {
	lvs, err := ParseLVs(readTestdata(t, "lvs-all-lvs.json"))
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]LV{}
	for _, lv := range lvs {
		by[lv.Name] = lv
	}
	if len(lvs) != 11 {
		t.Fatalf("got %d LVs, want 11", len(lvs))
	}
	lz := by["lz"]
	if lz.UUID != "Hn5udX-U1FB-5Hi7-Izbu-1rp2-J6uy-4kH9Aq" || lz.Size != 8<<20 || !lz.Active || lz.Thin() ||
		!lz.Public() || lz.DataPercent != -1 || lz.KernelMajor != 253 || lz.KernelMinor != 7 || lz.DMPath != "/dev/mapper/vgx-lz" {
		t.Errorf("lz = %+v", lz)
	}
	if lz4 := by["lz4"]; lz4.Active || lz4.KernelMajor != -1 {
		t.Errorf("inactive lz4 = %+v", lz4)
	}
	if p := by["pool"]; p.Public() || p.SegType != "thin-pool" || !slices.Equal(p.Layout, []string{"thin", "pool"}) || p.DataPercent != 0 {
		t.Errorf("pool = %+v", p)
	}
	if m := by["[pool_tmeta]"]; !m.Hidden() || m.Public() {
		t.Errorf("tmeta = %+v", m)
	}
	if ts := by["ts"]; !ts.Thin() || !ts.SkipActivation || ts.Pool != "pool" || !ts.Public() {
		t.Errorf("thin snapshot = %+v", ts)
	}
}

func TestParseLVsTags(t *testing.T) {
	lvs, err := ParseLVs([]byte(`{"report":[{"lv":[{"lv_name":"a","lv_size":"4194304","lv_tags":"volfs,volfs.mode=0640",
		"data_percent":"19.53","lv_attr":"Vwi-a-tz-k","segtype":"thin","lv_time":"2026-11-26 11:53:37 +0100"}]}],"log":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	a := lvs[0]
	if !slices.Equal(a.Tags, []string{"volfs", "volfs.mode=0640"}) || a.DataPercent != 19.53 || !a.SkipActivation || !a.Active {
		t.Errorf("a = %+v", a)
	}
	if want := time.Date(2026, 11, 26, 10, 53, 37, 0, time.UTC); !a.Created.Equal(want) {
		t.Errorf("lv_time parsed as %v, want %v", a.Created, want)
	}
	// json_std style: numbers as numbers.
	lvs, err = ParseLVs([]byte(`{"report":[{"lv":[{"lv_name":"b","lv_size":4194304,"lv_kernel_major":253}]}]}`))
	if err != nil || lvs[0].Size != 4194304 || lvs[0].KernelMajor != 253 || lvs[0].KernelMinor != -1 {
		t.Errorf("json_std: %+v, %v", lvs, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{
		``, `{`, `[]`, `{}`, `{"report":{}}`,
		`{"report":[{"lv":[{"lv_name":"a","lv_size":"x"}]}]}`,
		`{"report":[{"lv":[{"lv_name":"a","lv_size":"-5"}]}]}`,
		`{"report":[{"lv":[{"lv_size":"5"}]}]}`,
		`{"report":[{"lv":[{"lv_name":"a","data_percent":"NaN"}]}]}`,
		`{"report":[{"lv":[{"lv_name":["a"]}]}]}`,
	} {
		if lvs, err := ParseLVs([]byte(in)); err == nil {
			t.Errorf("ParseLVs(%s) = %+v, want error", in, lvs)
		}
	}
	if _, err := ParseVGs([]byte(`{"report":[{"vg":[{"vg_name":"v","vg_free":"-1"}]}]}`)); err == nil {
		t.Error("negative vg_free accepted")
	}
}

func TestParseVGs(t *testing.T) {
	vgs, err := ParseVGs(readTestdata(t, "vgs.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := VG{Name: "vgx", UUID: "BVhe2j-pzqz-gGOq-gQiq-Ze1j-A2Am-8DWCo0", Size: 1069547520, Free: 960495616, ExtentSize: 4 << 20,
		MdaSize: -1, MdaFree: -1} // not in this report
	if len(vgs) != 1 || vgs[0] != want {
		t.Fatalf("ParseVGs = %+v", vgs)
	}
}

func FuzzReport(f *testing.F) {
	ents, err := os.ReadDir("testdata")
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		if filepath.Ext(e.Name()) == ".json" {
			f.Add(readTestdata(f, e.Name()))
		}
	}
	f.Add([]byte(`{"report":[{"lv":[{"lv_name":"b","lv_size":1e300,"data_percent":"1e400"}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if lvs, err := ParseLVs(data); err == nil {
			for _, lv := range lvs {
				if lv.Name == "" || lv.Size < 0 || lv.DataPercent < -1 || lv.DataPercent > 100 {
					t.Fatalf("ParseLVs accepted %+v", lv)
				}
			}
		}
		if vgs, err := ParseVGs(data); err == nil {
			for _, vg := range vgs {
				if vg.Name == "" || vg.Size < 0 || vg.Free < 0 || vg.ExtentSize < 0 {
					t.Fatalf("ParseVGs accepted %+v", vg)
				}
			}
		}
	})
}
