package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	volfs "github.com/volfs/volfs/fs"
	"github.com/volfs/volfs/internal/lock"
	"github.com/volfs/volfs/volmap"
	"github.com/volfs/volfs/volmap/blockdev"
)

type mountCmd struct {
	devices    []string
	vg         string
	thinPool   string
	layout     string // --layout: the type; with mirrors and stripes, layoutOf
	mirrors    int
	stripes    int
	tag        string
	cacheTTL   time.Duration
	stateDir   string
	readOnly   bool
	foreground bool
	debug      bool
	logFile    string
	logLevel   string
	allowOther bool
	ioURing    bool
	cpuProfile string
	poolLimit  float64
	// liveMigration: activate linear images shared on a shared VG.
	liveMigration bool

	holder lock.Holder // this server, as its locks name it
	// locks are held until the process exits (dropped, they would be
	// closed by the garbage collector, releasing them). Appended to by
	// the driver's scans, which it serializes.
	locks    []*lock.Lock
	defaults defaultsFlags
	metrics  string
}

const readyFdEnv = "VOLFS_READY_FD"

func newMountCmd() *cobra.Command {
	c := &mountCmd{}
	cmd := &cobra.Command{
		Use:   "mount [flags] MOUNTPOINT",
		Short: "Mount volumes as image files",
		Long: `Mount every selected volume as a regular file under MOUNTPOINT and return once
the mount serves requests; the server keeps running in the background until
'volfs umount MOUNTPOINT' (or SIGTERM). With --foreground it stays attached
(for systemd: it reports readiness through $NOTIFY_SOCKET).

Volumes come from exactly one source:
  --vg VG          every public logical volume of an LVM volume group
  --device GLOB    existing block devices matched by the glob (repeatable);
                   each is a file named after the device's base name. These
                   cannot be created, removed, renamed or resized.

Files are owned by root and mode 0600 unless changed with chown/chmod; the
kernel enforces mode and owner for every user (default_permissions).
--uid, --gid and --file-mode give new files, and volumes volfs has no
attributes for, another owner and mode (the hypervisor's user, so it can
open its images without a chown per file).`,
		Example: `  volfs mount --device '/dev/zvol/tank/vms/*' /var/lib/images
  volfs mount --device /dev/loop3 --device /dev/loop4 --read-only /mnt/images
  volfs mount --vg vg0 --thin-pool pool /var/lib/images
  volfs mount --vg vg0 --uid libvirt-qemu --gid kvm --file-mode 0660 /var/lib/libvirt/images`,
		Args: exactArgs(1, "exactly one MOUNTPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error { return c.run(args[0]) },
	}
	f := cmd.Flags()
	f.StringArrayVar(&c.devices, "device", nil, "block devices to expose, a glob (repeatable)")
	f.StringVar(&c.vg, "vg", "", "LVM volume group whose logical volumes are the files")
	f.StringVar(&c.thinPool, "thin-pool", "", "with --vg: create new files as thin volumes in this pool")
	f.StringVar(&c.layout, "layout", "", "with --vg: layout of new files: "+strings.Join(volmap.Layouts, ", ")+" (default linear; thin mounts take the pool's)")
	f.IntVar(&c.mirrors, "mirrors", 0, "with --layout raid1 or raid10: extra copies of the data (lvcreate -m; default 1)")
	f.IntVar(&c.stripes, "stripes", 0, "with --layout striped, raid5, raid6 or raid10: data stripes (lvcreate -i; default 2, raid6 3)")
	f.StringVar(&c.tag, "tag", "", "with --vg: only logical volumes carrying this LVM tag")
	f.DurationVar(&c.cacheTTL, "cache-ttl", time.Second, "with --vg: how old the cached listing of the VG (one lvs) may get; other tools' changes show within it, plus 1s of kernel caching")
	f.StringVar(&c.stateDir, "state-dir", "/var/lib/volfs", "where attributes of --device files are kept")
	f.BoolVar(&c.readOnly, "read-only", false, "refuse every write (EROFS)")
	f.BoolVar(&c.foreground, "foreground", false, "stay attached instead of serving in the background")
	f.BoolVar(&c.debug, "debug", false, "log every FUSE request")
	f.StringVar(&c.logFile, "log-file", "", "log to this file, reopened on SIGHUP (default "+defaultLogFile+" in the background; stderr in the foreground or under systemd)")
	f.StringVar(&c.logLevel, "log-level", "info", "log messages of this level and above: "+levelNames())
	f.BoolVar(&c.allowOther, "allow-other", true, "let users other than root open files (mode and owner still apply)")
	f.BoolVar(&c.ioURing, "io-uring", true, "serve requests through FUSE over io_uring where the kernel has it (sets fuse.enable_uring); false: /dev/fuse only")
	f.BoolVar(&c.liveMigration, "live-migration", false, "with --vg on a shared VG (lvmlockd): activate linear images shared (lvchange -asy) at open, "+
		"so that another host may open an image at the same time, as a live migration does; the hypervisor's lease (libvirt's sanlock plugin, virtlockd) must keep two VMs from writing it")
	f.Float64Var(&c.poolLimit, "pool-limit", 90, "with --vg: refuse snapshots and clones while the thin pool's data or metadata use is above this percentage")
	f.StringVar(&c.cpuProfile, "cpu-profile", "", "write a Go CPU profile of the server to this file until unmount")
	f.StringVar(&c.defaults.uid, "uid", "", "owner (name or number) of new files and of volumes without volfs attributes")
	f.StringVar(&c.defaults.gid, "gid", "", "group (name or number) of new files and of volumes without volfs attributes")
	f.StringVar(&c.defaults.mode, "file-mode", "", "mode (octal) of new files and of volumes without volfs attributes")
	_ = f.MarkHidden("cpu-profile")
	f.StringVar(&c.metrics, "metrics", "", "serve Prometheus metrics at this address (e.g. 127.0.0.1:9480; off when empty)")
	return cmd
}

func (c *mountCmd) run(mountpoint string) error {
	switch {
	case len(c.devices) == 0 && c.vg == "":
		return usagef("say which volumes to mount: --vg VG or --device GLOB")
	case len(c.devices) > 0 && c.vg != "":
		return usagef("--vg and --device exclude each other")
	case c.vg == "" && (c.thinPool != "" || c.tag != "" || c.liveMigration):
		return usagef("--thin-pool, --tag and --live-migration go with --vg")
	case c.vg == "" && (c.layout != "" || c.mirrors != 0 || c.stripes != 0):
		return usagef("--layout, --mirrors and --stripes go with --vg")
	case c.layout == "" && (c.mirrors != 0 || c.stripes != 0):
		return usagef("--mirrors and --stripes go with --layout")
	case c.thinPool != "" && c.layout != "" && c.layout != "linear":
		return usagef("--layout %s with --thin-pool: thin volumes take the layout of their pool; "+
			"give the pool a RAID layout instead (lvconvert --type raid1 -m 1 %s/%s_tdata)", c.layout, c.vg, c.thinPool)
	case c.cacheTTL <= 0:
		return usagef("--cache-ttl %v: want a positive duration such as 1s", c.cacheTTL)
	}
	if _, err := c.layoutOf(); err != nil {
		return err
	}
	if err := c.checkLogFlags(); err != nil {
		return err
	}
	if _, err := c.defaults.defaults(); err != nil {
		return err
	}
	mnt, err := checkMountpoint(mountpoint)
	if err != nil {
		return err
	}
	hidden := firstEntry(mnt)
	if !c.foreground {
		if err := c.spawn(mnt); err != nil {
			return err
		}
		warnHidden(mnt, hidden)
		return nil
	}
	return c.serve(mnt, hidden)
}

// checkMountpoint catches what would otherwise fail deep in mount(2) with
// a bare errno.
func checkMountpoint(mountpoint string) (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("mount must run as root: the server opens block devices")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "", errors.New("/dev/fuse is missing: load the fuse module (modprobe fuse)")
	}
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", err
	}
	// Before any stat: a stat of a wedged mount would never return.
	if err := notMounted(abs); err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("mountpoint %s does not exist: create it with mkdir -p %s", abs, abs)
	case errors.Is(err, syscall.ENOTCONN):
		return "", fmt.Errorf("mountpoint %s is a FUSE mount whose server has died: run 'volfs umount %s' (add --force if that fails) first", abs, abs)
	case err != nil:
		return "", fmt.Errorf("mountpoint %s: %w", abs, err)
	case !st.IsDir():
		return "", fmt.Errorf("mountpoint %s is not a directory", abs)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	if err := notMounted(abs); err != nil {
		return "", err
	}
	return abs, nil
}

// spawn starts the server in the background and returns when it serves (or
// says why it could not).
func (c *mountCmd) spawn(mnt string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	logPath := c.logTarget()
	logw, err := newLogWriter(logPath)
	if err != nil {
		pw.Close()
		return err
	}
	defer logw.Close()
	args := append([]string{"mount", "--foreground", "--log-file=" + logPath}, os.Args[2:]...)
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), readyFdEnv+"=3")
	cmd.ExtraFiles = []*os.File{pw}
	cmd.Stdout, cmd.Stderr = logw.f, logw.f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return err
	}
	pw.Close()
	msg, _ := io.ReadAll(pr)
	if string(msg) == "ok" {
		_ = cmd.Process.Release()
		return nil
	}
	_ = cmd.Wait()
	if len(msg) == 0 {
		return fmt.Errorf("the server exited before mounting; see %s", cmp.Or(logPath, "its log"))
	}
	return errors.New(string(msg))
}

// serve mounts and serves until unmounted. Errors before the mount is ready
// go to the waiting parent (or the terminal) as one line.
func (c *mountCmd) serve(mnt, hidden string) (err error) {
	var ready *os.File
	if os.Getenv(readyFdEnv) == "3" {
		ready = os.NewFile(3, "ready")
		os.Unsetenv(readyFdEnv)
		defer func() {
			if ready != nil { // failed before ready
				fmt.Fprint(ready, err)
				ready.Close()
			}
		}()
	}
	logw, err := newLogWriter(c.logTarget())
	if err != nil {
		return err
	}
	defer logw.Close()
	log := c.newLogger(logw, logw.path == "" && toJournal()).With(slog.String("mount", mnt))
	// A log that went away (journald restarted) must not kill the server.
	signal.Ignore(syscall.SIGPIPE)
	if os.Getenv("GOMAXPROCS") == "" {
		// Served through /dev/fuse, every request blocks its thread in a
		// device syscall; with only one P per core, runnable request
		// goroutines wait until the runtime takes a P back from a blocked
		// thread. More Ps than cores keep them running (measured: +25-50%
		// IOPS at queue depth 32). The io_uring queues, one per possible
		// CPU, keep a P each while they wait (volfs.RingProcs).
		procs := max(16, 8*runtime.NumCPU())
		if c.ioURing {
			procs = max(procs, volfs.RingProcs())
		}
		runtime.GOMAXPROCS(procs)
	}
	ctx := context.Background()
	holder, err := c.lockVG(mnt)
	if err != nil {
		return err
	}
	c.holder = holder
	defer c.releaseLocks()
	drv, err := c.driver(ctx, log)
	if err != nil {
		return err
	}
	// Catch SIGTERM before the mount exists: a server killed while one of
	// its own threads waits on its mount (go-fuse checks the new mount
	// through it) can never finish exiting.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	defaults, err := c.defaults.defaults()
	if err != nil {
		return err
	}
	root := volfs.NewRoot(volfs.Options{Driver: drv, Log: log, ReadOnly: c.readOnly, Defaults: defaults})
	root.RemoveStaleClones(ctx)
	insp, err := c.startInspection(mnt, root, log) // volfs ls, volfs status, --metrics
	if err != nil {
		return err
	}
	defer insp.close()
	srv, err := volfs.Mount(mnt, root, volfs.MountOptions{Debug: c.debug, AllowOther: c.allowOther, IOUring: c.ioURing, FsName: c.source()})
	if err != nil {
		return fmt.Errorf("mount %s: %w", mnt, err)
	}
	if removePid, err := writePidFile(mnt); err != nil {
		log.Warn("no pid file: volfs umount will not wait for this server", slog.Any("err", err))
	} else {
		defer removePid()
	}

	go handleSignals(sigs, srv, mnt, log, logw)
	if c.cpuProfile != "" {
		if stop, err := startCPUProfile(c.cpuProfile); err != nil {
			log.Warn("no CPU profile", slog.Any("err", err))
		} else {
			defer stop()
		}
	}
	log.Info("serving", slog.String("version", version), slog.Bool("read_only", c.readOnly))
	if hidden != "" {
		log.Warn("mount point is not empty: its files are hidden while mounted", slog.String("first", hidden))
	}
	if ready != nil {
		fmt.Fprint(ready, "ok")
		ready.Close()
		ready = nil
	}
	sdNotify(fmt.Sprintf("READY=1\nSTATUS=serving %s at %s", c.source(), mnt))
	srv.Wait()
	sdNotify("STOPPING=1\nSTATUS=unmounted; writing out attributes")
	root.Shutdown(ctx)
	log.Info("unmounted")
	return nil
}

func (c *mountCmd) driver(ctx context.Context, log *slog.Logger) (volmap.Driver, error) {
	if c.vg != "" {
		return newLVMDriver(ctx, c, log)
	}
	return blockdev.New(blockdev.Config{Globs: c.devices, StateDir: c.stateDir, Log: log, Claim: c.claimDevice})
}

// startCPUProfile profiles the server, for `make bench` investigations.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// layoutOf is the layout of new files that --layout, --mirrors and
// --stripes ask for (zero: linear, LVM's default).
func (c *mountCmd) layoutOf() (volmap.Layout, error) {
	if c.layout == "" {
		return volmap.Layout{}, nil
	}
	l, err := volmap.NewLayout(c.layout, c.mirrors, c.stripes)
	if err != nil {
		return l, usagef("--layout %s --mirrors %d --stripes %d: %v", c.layout, c.mirrors, c.stripes, err)
	}
	return l, nil
}
