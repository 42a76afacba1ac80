package lvm

import "testing"

func TestParseAutoextend(t *testing.T) {
	for _, tc := range []struct {
		out      string
		thr, pct int
		ok       bool
	}{
		{"thin_pool_autoextend_threshold=100\nthin_pool_autoextend_percent=20\n", 100, 20, true},
		{"  thin_pool_autoextend_threshold = 80\n  thin_pool_autoextend_percent=0\n", 80, 0, true},
		{"thin_pool_autoextend_threshold=70\n", 70, 0, false},
		{"Configuration node activation/x not found\n", 0, 0, false},
	} {
		thr, pct, ok := parseAutoextend(tc.out)
		if thr != tc.thr || pct != tc.pct || ok != tc.ok {
			t.Errorf("parseAutoextend(%q) = %d, %d, %v; want %d, %d, %v", tc.out, thr, pct, ok, tc.thr, tc.pct, tc.ok)
		}
	}
}
