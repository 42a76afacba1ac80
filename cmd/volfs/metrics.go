package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	volfs "github.com/volfs/volfs/fs"
	"github.com/volfs/volfs/volmap/lvm"
)

// histogramOps are the operations whose durations are histograms: the
// data path, and those that may run lvm commands.
var histogramOps = []string{"read", "write", "fsync", "open", "create", "release", "setattr", "unlink", "rename", "fallocate"}

// startMetrics serves Prometheus metrics at addr (/metrics) until stop.
func startMetrics(addr string, insp *volfs.Inspector, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(newMountCollector(insp, log))
	lvmDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "volfs_lvm_command_duration_seconds",
		Help:    "Duration of the lvm2 commands the server ran, by command.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"command"})
	lvmFail := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "volfs_lvm_command_failures_total",
		Help: "lvm2 commands that failed, by command.",
	}, []string{"command"})
	reg.MustRegister(lvmDur, lvmFail)
	lvm.SetObserver(func(command string, took time.Duration, failed bool) {
		lvmDur.WithLabelValues(command).Observe(took.Seconds())
		if failed {
			lvmFail.WithLabelValues(command).Inc()
		} else {
			lvmFail.WithLabelValues(command).Add(0) // the series exists before the first failure
		}
	})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogAdapter{log}}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "volfs: metrics are at /metrics")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", slog.Any("err", err))
		}
	}()
	log.Info("serving metrics", slog.String("addr", ln.Addr().String()))
	return func() {
		lvm.SetObserver(nil)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Println(v ...any) { a.log.Warn("metrics: " + fmt.Sprint(v...)) }

// mountCollector reads the mount's counters at every scrape.
type mountCollector struct {
	insp *volfs.Inspector
	log  *slog.Logger

	requests, errors, duration, readBytes, writtenBytes *prometheus.Desc
	openFiles, openHandles, start, info                 *prometheus.Desc
	poolSize, poolFree, poolData, poolMeta              *prometheus.Desc
	degraded, imageDegraded                             *prometheus.Desc
}

func newMountCollector(insp *volfs.Inspector, log *slog.Logger) *mountCollector {
	d := prometheus.NewDesc
	return &mountCollector{
		insp:         insp,
		log:          log,
		requests:     d("volfs_requests_total", "FUSE requests answered, by operation.", []string{"op"}, nil),
		errors:       d("volfs_errors_total", "FUSE requests answered with an error, by operation (a lookup of a missing name, or of an absent or unsupported xattr, is not an error).", []string{"op"}, nil),
		duration:     d("volfs_request_duration_seconds", "Time to answer a FUSE request, by operation.", []string{"op"}, nil),
		readBytes:    d("volfs_read_bytes_total", "Bytes read from images.", nil, nil),
		writtenBytes: d("volfs_written_bytes_total", "Bytes written to images.", nil, nil),
		openFiles:    d("volfs_open_files", "Images with open handles.", nil, nil),
		openHandles:  d("volfs_open_handles", "Open handles of images.", nil, nil),
		start:        d("volfs_start_time_seconds", "When the mount started serving, in seconds since the epoch.", nil, nil),
		info:         d("volfs_info", "The server: version, source and transport (io_uring or /dev/fuse).", []string{"version", "source", "transport", "mountpoint"}, nil),
		poolSize:     d("volfs_pool_size_bytes", "Size of the volume group or thin pool.", []string{"pool", "kind"}, nil),
		poolFree:     d("volfs_pool_free_bytes", "Free space of the volume group or thin pool.", []string{"pool", "kind"}, nil),
		poolData:     d("volfs_pool_data_fill_ratio", "Data fill of a thin pool (0-1).", []string{"pool"}, nil),
		poolMeta:     d("volfs_pool_metadata_fill_ratio", "Metadata fill of a thin pool (0-1).", []string{"pool"}, nil),
		degraded:     d("volfs_degraded_images", "Images whose RAID volume runs without one of its images or parity.", nil, nil),
		imageDegraded: d("volfs_image_degraded", "1 for each image whose RAID volume is degraded, with LVM's health.",
			[]string{"image", "layout", "health"}, nil),
	}
}

func (c *mountCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.errors, c.duration, c.readBytes, c.writtenBytes,
		c.openFiles, c.openHandles, c.start, c.info, c.poolSize, c.poolFree, c.poolData, c.poolMeta,
		c.degraded, c.imageDegraded} {
		ch <- d
	}
}

func (c *mountCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.insp.Stats()
	mk := prometheus.MustNewConstMetric
	ch <- mk(c.readBytes, prometheus.CounterValue, float64(s.ReadBytes))
	ch <- mk(c.writtenBytes, prometheus.CounterValue, float64(s.WrittenBytes))
	ch <- mk(c.start, prometheus.GaugeValue, float64(s.Start.UnixNano())/1e9)
	// Every operation has its series from the start, so rate() and
	// alerts work before the first error.
	for op := range volfs.NumOps {
		name := op.String()
		oc := s.Ops[name]
		ch <- mk(c.requests, prometheus.CounterValue, float64(oc.Requests), name)
		ch <- mk(c.errors, prometheus.CounterValue, float64(oc.Errors), name)
	}
	for _, name := range histogramOps {
		oc := s.Ops[name]
		buckets := make(map[float64]uint64, len(volfs.LatencyBuckets))
		for i, le := range volfs.LatencyBuckets {
			if oc.Buckets != nil {
				buckets[le] = oc.Buckets[i]
			} else {
				buckets[le] = 0
			}
		}
		ch <- prometheus.MustNewConstHistogram(c.duration, oc.Requests, oc.Seconds, buckets, name)
	}
	files, handles := c.insp.OpenFiles()
	ch <- mk(c.openFiles, prometheus.GaugeValue, float64(files))
	ch <- mk(c.openHandles, prometheus.GaugeValue, float64(handles))
	info, transport := c.insp.Info(), "/dev/fuse"
	if s.IOURing {
		transport = "io_uring"
	}
	ch <- mk(c.info, prometheus.GaugeValue, 1, info.Version, info.Source, transport, info.Mount)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	deg := c.insp.Degraded(ctx)
	ch <- mk(c.degraded, prometheus.GaugeValue, float64(len(deg)))
	for _, d := range deg {
		ch <- mk(c.imageDegraded, prometheus.GaugeValue, 1, d.Name, d.Layout, d.Health)
	}
	pools, err := c.insp.Pools(ctx)
	if err != nil {
		c.log.Warn("metrics: pools unknown", slog.Any("err", err))
		return
	}
	for _, p := range pools {
		ch <- mk(c.poolSize, prometheus.GaugeValue, float64(p.Size), p.Name, p.Kind)
		ch <- mk(c.poolFree, prometheus.GaugeValue, float64(p.Free), p.Name, p.Kind)
		if p.Kind == "thin-pool" && p.DataPercent >= 0 {
			ch <- mk(c.poolData, prometheus.GaugeValue, p.DataPercent/100, p.Name)
			ch <- mk(c.poolMeta, prometheus.GaugeValue, max(p.MetadataPercent, 0)/100, p.Name)
		}
	}
}
