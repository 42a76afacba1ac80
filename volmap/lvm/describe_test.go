package lvm

import "testing"

func TestParsePools(t *testing.T) {
	out := []byte(`{"report":[{"lv":[
		{"lv_name":"pool","lv_size":"1073741824","segtype":"thin-pool","data_percent":"25.00","metadata_percent":"10.50"},
		{"lv_name":"cold","lv_size":"1048576","segtype":"thin-pool","data_percent":"","metadata_percent":""},
		{"lv_name":"tight","lv_size":"1048576","segtype":"thin-pool","data_percent":"50.00","metadata_percent":"100.00",
		 "lv_health_status":"metadata_read_only","lv_check_needed":"check needed"}]}]}`)
	pools, err := parsePools(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 3 || pools[0].Name != "cold" || pools[1].Name != "pool" || pools[2].Name != "tight" {
		t.Fatalf("pools = %+v", pools)
	}
	if p := pools[1]; p.Size != 1<<30 || p.Free != 3<<28 || p.DataPercent != 25 || p.MetadataPercent != 10.5 {
		t.Errorf("pool = %+v", p)
	}
	if p := pools[0]; p.DataPercent != -1 || p.Free != p.Size {
		t.Errorf("inactive pool = %+v", p)
	}
	if p := pools[1]; p.Health != "" || p.NeedsCheck || p.MetadataFull() {
		t.Errorf("healthy pool = %+v", p)
	}
	if p := pools[2]; p.Health != "metadata_read_only" || !p.NeedsCheck || !p.MetadataFull() {
		t.Errorf("pool out of metadata = %+v", p)
	}
}
