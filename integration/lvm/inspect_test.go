package lvm

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLsStatusThinPool: volfs ls, volfs status and the metrics of a mount
// of a VG with a thin pool, a linear file held open by a process and a
// thin file written through the mount.
func TestLsStatusThinPool(t *testing.T) {
	e := newVG(t)
	e.thinPool("pool", "64m")
	sh(t, "lvcreate", "-q", "-L", "8m", "-n", "lin", e.vg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	m := e.mount("--thin-pool", "pool", "--metrics", addr)
	h := hold(t, m.path("lin"), "")
	// The file's last close (trim, attributes) may still run in the server
	// when ls asks: ls shows the size stat shows all the same.
	sh(t, "dd", "if="+e.file("data", 16*mib, 1), "of="+m.path("thin1"), "bs=1M", "oflag=direct", "status=none")

	var l struct {
		Files []struct {
			Name    string `json:"name"`
			Size    int64  `json:"size"`
			Used    int64  `json:"used"`
			Kind    string `json:"kind"`
			Path    string `json:"path"`
			Pool    string `json:"pool"`
			Handles int    `json:"handles"`
			Holders []struct {
				PID int `json:"pid"`
			} `json:"holders"`
		} `json:"files"`
		Pools []struct {
			Name            string  `json:"name"`
			Kind            string  `json:"kind"`
			Size            int64   `json:"size"`
			Free            int64   `json:"free"`
			DataPercent     float64 `json:"data_percent"`
			MetadataPercent float64 `json:"metadata_percent"`
		} `json:"pools"`
	}
	runJSON(t, &l, "ls", "--json", m.dir)
	if len(l.Files) != 2 || l.Files[0].Name != "lin" || l.Files[1].Name != "thin1" {
		t.Fatalf("ls --json files: %+v", l.Files)
	}
	lin, thin := l.Files[0], l.Files[1]
	if lin.Kind != "linear" || lin.Path != "/dev/"+e.vg+"/lin" || lin.Size != 8*mib || lin.Used != 8*mib ||
		lin.Handles != 1 || len(lin.Holders) != 1 || lin.Holders[0].PID != h.cmd.Process.Pid {
		t.Errorf("ls --json lin: %+v", lin)
	}
	if thin.Kind != "thin" || thin.Pool != "pool" || thin.Size != 16*mib || thin.Used < 16*mib || thin.Handles != 0 {
		out, _ := try("lvs", "-o", "lv_name,lv_size,lv_tags", e.vg)
		t.Errorf("ls --json thin1: %+v; stat: %d bytes; lvs:\n%s", thin, size(t, m.path("thin1")), out)
	}
	if len(l.Pools) != 2 || l.Pools[0].Name != e.vg || l.Pools[0].Kind != "vg" || l.Pools[0].Free <= 0 ||
		l.Pools[1].Name != e.vg+"/pool" || l.Pools[1].Kind != "thin-pool" || l.Pools[1].Size != 64*mib ||
		l.Pools[1].DataPercent < 20 || l.Pools[1].DataPercent > 60 || l.Pools[1].MetadataPercent <= 0 {
		t.Errorf("ls --json pools: %+v", l.Pools)
	}
	out, err := exec.Command(volfsBin, "ls", m.dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "thin pool "+e.vg+"/pool: 64 MiB") {
		t.Errorf("volfs ls: %v\n%s", err, out)
	}

	var st struct {
		Source   string   `json:"source"`
		Warnings []string `json:"warnings"`
	}
	runJSON(t, &st, "status", "--json", m.dir)
	if st.Source != e.vg+"/pool" || len(st.Warnings) != 0 {
		t.Errorf("status --json: %+v", st)
	}
	// 16 MiB of 64 MiB: the pool's data is 25% full, its metadata less.
	runJSON(t, &st, "status", "--json", "--warn-fill", "20", m.dir)
	if len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "thin pool "+e.vg+"/pool data") {
		t.Errorf("status --json --warn-fill 20: warnings %q", st.Warnings)
	}
	out, err = exec.Command(volfsBin, "status", "--warn-fill", "20", m.dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "warning: thin pool "+e.vg+"/pool data is") {
		t.Errorf("volfs status --warn-fill 20: %v\n%s", err, out)
	}

	mt := scrapeMetrics(t, addr)
	if v := mt[`volfs_pool_data_fill_ratio{pool="`+e.vg+`/pool"}`]; v < 0.2 || v > 0.6 {
		t.Errorf("volfs_pool_data_fill_ratio = %v", v)
	}
	if mt[`volfs_pool_metadata_fill_ratio{pool="`+e.vg+`/pool"}`] <= 0 {
		t.Error("no volfs_pool_metadata_fill_ratio")
	}
	if mt[`volfs_lvm_command_duration_seconds_count{command="lvcreate"}`] < 1 {
		t.Error("no lvcreate in volfs_lvm_command_duration_seconds")
	}
	if _, ok := mt[`volfs_lvm_command_failures_total{command="lvs"}`]; !ok {
		t.Error("no volfs_lvm_command_failures_total for lvs")
	}
}

func runJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out, err := exec.Command(volfsBin, args...).Output()
	if err != nil {
		t.Fatalf("volfs %s: %v", strings.Join(args, " "), err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("volfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// scrapeMetrics reads a Prometheus text exposition: value by "name{labels}".
func scrapeMetrics(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	m, err := metrics(addr)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// metricsClient keeps no idle connection: a scrape leaves no fd or
// goroutine behind, in the test or in the server.
var metricsClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}

// metrics is scrapeMetrics for any goroutine: it returns its error.
func metrics(addr string) (map[string]float64, error) {
	resp, err := metricsClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("metrics at %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK || len(m) == 0 {
		return nil, fmt.Errorf("metrics at %s: %s, %d values", addr, resp.Status, len(m))
	}
	return m, nil
}
