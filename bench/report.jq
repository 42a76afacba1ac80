# Renders bench/run.sh's records ($r: one object per measurement: rep, dev,
# side, job, metric, value) as markdown tables: per device and job row,
# each side's median (min–max) and its ratio to raw's median; then the
# scale rows of bench/scale.sh (side "scale", dev "guest" or "host"): each
# figure's median (min–max) and its ratio to its baseline (one `lvs` of the
# VG, or the same lvm commands run by lvm alone).
#
# Honesty: a cell whose range is wider than 25% of its median is marked
# "±!" (the machine was noisy: rerun before quoting it). A raw figure that
# disagrees with raw's own figure for the same I/O through the other engine
# (libaio against io_uring at QD32, more than 25% apart) is suspect: its row
# gets no ratios ("raw?"), since dividing by it would flatter or shame the
# other sides.

def rows: [
  ["seqread", "MBps", "1M seq read, libaio QD16", "MB/s"],
  ["seqwrite", "MBps", "1M seq write, libaio QD16", "MB/s"],
  ["randread32", "kIOPS", "4k rand read, libaio QD32", "kIOPS"],
  ["randwrite32", "kIOPS", "4k rand write, libaio QD32", "kIOPS"],
  ["randread32u", "kIOPS", "4k rand read, io_uring QD32", "kIOPS"],
  ["randwrite32u", "kIOPS", "4k rand write, io_uring QD32", "kIOPS"],
  ["randread1", "lat_mean_us", "4k rand read QD1, mean", "µs ↓"],
  ["randread1", "lat_p99_us", "4k rand read QD1, p99", "µs ↓"],
  ["randwrite1", "lat_mean_us", "4k rand write QD1, mean", "µs ↓"],
  ["randwrite1", "lat_p99_us", "4k rand write QD1, p99", "µs ↓"],
  ["syncwrite1", "IOPS", "4k rand write QD1 + fdatasync", "IOPS"],
  ["syncwrite1", "sync_p99_us", "4k rand write QD1 + fdatasync: fdatasync p99", "µs ↓"],
  ["bufread", "MBps", "buffered seq read (one pass)", "MB/s"],
  ["cpin", "MBps", "cp 1 GiB image in", "MB/s"],
  ["cpout", "MBps", "cp image out", "MB/s"],
  ["cvin", "MBps", "qemu-img convert in", "MB/s"],
  ["cvout", "MBps", "qemu-img convert out", "MB/s"]
];
def sides: ["raw", "volfs", "volfsdev", "qsd", "ext4", "ext4s"];
def side_names: ["raw device", "volfs", "volfs /dev/fuse", "qemu-storage-daemon", "ext4 prealloc", "ext4 sparse"];
def devs: ["shm", "disk"];

def median: sort | if length == 0 then null
  elif length % 2 == 1 then .[length / 2 | floor]
  else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def fmt: if . == null then "—"
  elif . >= 100 then (round | tostring)
  elif . >= 10 then ((. * 10 | round) / 10 | tostring)
  else ((. * 100 | round) / 100 | tostring) end;
def fmtratio: ((. * 100 | round) / 100 | tostring) as $s
  | ($s | if test("\\.") then . else . + ".0" end) as $s
  | ($s | if test("\\.[0-9]$") then . + "0" else . end) + "×";

def vals($dev; $side; $job; $metric):
  [$r[] | select(.dev == $dev and .side == $side and .job == $job and .metric == $metric) | .value];
def failed($dev; $side; $job):
  any($r[]; .dev == $dev and .side == $side and .job == $job and .metric == "fail");
def rng($v): if ($v | length) > 1 then " (\($v | min | fmt)–\($v | max | fmt))" else "" end;
def wide($v): ($v | length) > 1 and ($v | median) as $m | $m != 0 and (($v | max) - ($v | min)) > 0.25 * $m;
def twin: {randread32: "randread32u", randread32u: "randread32", randwrite32: "randwrite32u", randwrite32u: "randwrite32"};
def rawsuspect($dev; $job; $metric):
  twin[$job] as $t
  | if $t == null then false
    else (vals($dev; "raw"; $job; $metric) | median) as $a
    | (vals($dev; "raw"; $t; $metric) | median) as $b
    | $a != null and $b != null and $a > 0 and $b > 0 and (($a / $b) < 0.75 or ($b / $a) < 0.75)
    end;

def cell($dev; $side; $job; $metric; $raw; $secs; $suspect):
  vals($dev; $side; $job; $metric) as $v
  | if ($v | length) == 0 then (if failed($dev; $side; $job) then "FAIL" else "" end)
    else ($v | median) as $m
    | "\($m | fmt)\(rng($v))"
      + (if wide($v) then " ±!" else "" end)
      + (if $side == "raw" and $suspect then " raw?"
         elif $side != "raw" and $suspect then ""
         elif $side != "raw" and $raw != null and $raw != 0 then " \($m / $raw | fmtratio)" else "" end)
      + (if $secs then " [\(vals($dev; $side; $job; "s") | median | fmt) s]" else "" end)
      + (if failed($dev; $side; $job) then " (some FAILED)" else "" end)
    end;

# the request size of the fio jobs: server CPU per I/O from CPU per GiB
def iosize: {seqread: 1048576, seqwrite: 1048576, bufread: 1048576, randread32: 4096, randwrite32: 4096,
  randread32u: 4096, randwrite32u: 4096, randread1: 4096, randwrite1: 4096, syncwrite1: 4096};
def cpu($dev; $side; $job; $first):
  if $first | not then ""
  else vals($dev; $side; $job; "cpu_ms_per_GiB") as $v
    | if ($v | length) == 0 then ""
      else "\($v | median | fmt)\(rng($v))"
        + (iosize[$job] as $bs | if $bs == null then ""
           else " · \($v | median | . * $bs / 1073741824 * 1000 | fmt) µs/IO" end)
      end
  end;

# --- scale rows (bench/scale.sh) ---
# [where, key, label, unit, baseline key, baseline label, lvm command count key]
def scale_rows: [
  ["guest", "lsl_cold_s", "`ls -l` of the VG's files, cold (after mount, default 1 s TTL)", "s ↓", "lvs_s", "`lvs` of the VG", "lsl_cold_lvs"],
  ["guest", "lsl_warm_s", "`ls -l` again (default TTL)", "s ↓", "lvs_s", "`lvs` of the VG", "lsl_warm_lvs"],
  ["guest", "lsl_expired_s", "`ls -l` after 5 s of quiet (listing expired, VG unchanged: renewed)", "s ↓", "lvs_s", "`lvs` of the VG", "lsl_expired_lvs"],
  ["guest", "lsl_fresh_s", "`ls -l`, listing fresh (`--cache-ttl 10m`), kernel caches cold", "s ↓", "lvs_s", "`lvs` of the VG", null],
  ["guest", "lsl_changed_s", "`ls -l` after a create and a removal by volfs (`--cache-ttl 10m`)", "s ↓", "lvs_s", "`lvs` of the VG", "lsl_changed_lvs"],
  ["guest", "ls_names_s", "`ls` (names only), kernel caches dropped", "s ↓", "lvs_s", "`lvs` of the VG", null],
  ["guest", "stat_s", "`stat` of one file, kernel caches dropped, listing fresh", "s ↓", null, null, "stat_lvs"],
  ["guest", "stat_ttl_s", "`stat` of one file, listing older than the TTL (VG unchanged: renewed)", "s ↓", null, null, "stat_ttl_lvs"],
  ["guest", "lsl_requests", "FUSE requests of one `ls -l` (listing fresh)", "requests ↓", null, null, null],
  ["guest", "lsl_getxattr", "… of which GETXATTR", "requests ↓", null, null, null],
  ["guest", "lsl_readdirplus", "… of which READDIRPLUS", "requests ↓", null, null, null],
  ["guest", "rss_kib_per_file", "server RSS per file after `ls -l`", "KiB ↓", null, null, null],
  ["guest", "mount_s", "`volfs mount` of the VG", "s ↓", "lvs_s", "`lvs` of the VG", "mount_lvm"],
  ["guest", "create_s", "small images copied in, 8 `cp` at a time", "s ↓", "create_lvm_s", "lvcreate + lvresize + lvchange each, by lvm alone", null],
  ["guest", "create_lvm_per_file", "lvm commands per image copied in", "commands ↓", null, null, null],
  ["guest", "create_reads_per_file", "… of which reads (`lvs`, `vgs`)", "commands ↓", null, null, null],
  ["host", "lsl_cold_ms", "`ls -l` of 1,000 files, fs layer (in-memory driver), cold", "ms ↓", null, null, null],
  ["host", "lsl_warm_ms", "`ls -l` again, warm", "ms ↓", null, null, null],
  ["host", "lsl_requests", "FUSE requests of one `ls -l`", "requests ↓", null, null, null],
  ["host", "heap_kib_per_file", "Go heap per file (its node)", "KiB ↓", null, null, null]
];
def svals($where; $key): vals($where; "scale"; $key; "v");
def scell($v): if ($v | length) == 0 then "—"
  else "\($v | median | fmt)\(rng($v))" + (if wide($v) then " ±!" else "" end) end;

def scale_table:
  "### Scale (issue #13: a VG of 1,000 LVs)",
  "",
  "guest: TestScale and TestScaleConcurrentCreate (integration/lvm) in a QEMU TCG guest, 1 vCPU, one run: \(svals("guest"; "files") | median // "?") LVs; \(svals("guest"; "create_files") | median // 0) images copied in. host: TestScaleListing (fs/), \([$r[] | select(.dev == "host" and .side == "scale") | .rep] | unique | length) runs. Ratios are to the baseline's median.",
  "",
  "| where | measure | unit | volfs | baseline | ratio | lvm commands |",
  "|---|---|---|---:|---:|---:|---:|",
  (scale_rows[] as [$where, $key, $lbl, $unit, $bkey, $blbl, $ckey]
    | svals($where; $key) as $v
    | select($v | length > 0)
    | (if $bkey == null then [] else svals($where; $bkey) end) as $b
    | "| \($where) | \($lbl) | \($unit) | \(scell($v)) | "
      + (if ($b | length) == 0 then "" else "\($blbl): \(scell($b))" end) + " | "
      + (if ($b | length) == 0 or ($b | median) == 0 then "" else ($v | median) / ($b | median) | fmtratio end) + " | "
      + (if $ckey == null then "" else svals($where; $ckey) as $c | if ($c | length) == 0 then "" else "\($c | median | fmt) \(if $ckey | endswith("_lvs") then "lvs" else "commands" end)" end end)
      + " |"),
  "",
  "±! = range wider than 25% of the median. lvm commands: the lvm commands the server ran meanwhile (its debug log).";

def device_table:
  "| device | job | unit | " + (side_names | join(" | ")) + " | volfs server CPU ms/GiB · per I/O | qsd CPU ms/GiB · per I/O |",
  "|---|---|---|" + ([sides[] | "---:"] | join("|")) + "|---:|---:|",
  (devs[] as $dev
    | rows as $rows
    | range(0; $rows | length) as $i
    | $rows[$i] as [$job, $metric, $lbl, $unit]
    | select(any($r[]; .dev == $dev and .job == $job and (.metric == $metric or .metric == "fail")))
    | ($i == 0 or $rows[$i - 1][0] != $job) as $first
    | (vals($dev; "raw"; $job; $metric) | median) as $raw
    | ($job | test("^(cp|cv)")) as $secs
    | rawsuspect($dev; $job; $metric) as $suspect
    | "| \($dev) | \($lbl) | \($unit) | "
      + ([sides[] as $side | cell($dev; $side; $job; $metric; $raw; $secs; $suspect)] | join(" | "))
      + " | \(cpu($dev; "volfs"; $job; $first)) | \(cpu($dev; "qsd"; $job; $first)) |"),
  "",
  "±! = range wider than 25% of the median (noisy: rerun before quoting). raw? = raw's libaio and io_uring figures for the same job are more than 25% apart: no ratios on that row."
;

(if any($r[]; .side != "scale") then device_table else empty end),
(if any($r[]; .side == "scale") then (if any($r[]; .side != "scale") then "" else empty end), scale_table else empty end)
