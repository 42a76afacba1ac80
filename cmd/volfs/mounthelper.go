package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// helperName is the name mount(8) runs for file system type fuse.volfs
// (`mount -t fuse.volfs`, or that type in /etc/fstab): make install puts it
// in /sbin as a symlink to the volfs binary.
const helperName = "mount.fuse.volfs"

// isMountHelper reports whether volfs was started as mount(8)'s helper.
// mount.volfs is accepted too (`mount -t volfs`), as rclone accepts
// mount.rclone; findmnt shows fuse.volfs either way.
func isMountHelper(argv0 string) bool {
	b := filepath.Base(argv0)
	return b == helperName || b == "mount.volfs"
}

// Exit codes of a mount helper, which mount(8) passes on: its own
// conventions (mount(8), "RETURN CODES"), as mount.nfs follows them.
const (
	mountExitUsage   = 1
	mountExitFailure = 32
)

// runAsHelper runs volfs as mount(8)'s or umount(8)'s helper when argv[0]
// says so; ok is false otherwise.
func runAsHelper(argv0 string) (code int, ok bool) {
	switch {
	case isMountHelper(argv0):
		ensurePath()
		return helperExit(newMountHelperCmd().Execute()), true
	case isUmountHelper(argv0):
		return helperExit(newUmountHelperCmd().Execute()), true
	}
	return 0, false
}

// ensurePath gives the server a PATH in which it finds lvm: mount(8)
// (util-linux 2.38) runs its helpers without PATH, and the server failed
// with "exec: lvm: executable file not found in $PATH".
func ensurePath() {
	path := os.Getenv("PATH")
	have := filepath.SplitList(path)
	for _, d := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		if !slices.Contains(have, d) {
			have = append(have, d)
		}
	}
	os.Setenv("PATH", strings.Join(have, string(filepath.ListSeparator)))
}

// helperExit reports a helper's error and returns its exit code.
func helperExit(err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", filepath.Base(os.Args[0]), err)
	var ue usageError
	if errors.As(err, &ue) {
		return mountExitUsage
	}
	return mountExitFailure
}

type mountHelper struct {
	opts      []string
	sloppy    bool
	fake      bool
	noMtab    bool
	verbose   bool
	namespace string
	fstype    string
}

func newMountHelperCmd() *cobra.Command {
	h := &mountHelper{}
	cmd := &cobra.Command{
		Use:   helperName + " SOURCE MOUNTPOINT [-o OPTIONS]",
		Short: "Mount volfs with mount(8) and /etc/fstab",
		Long: `mount(8) runs this helper for file system type fuse.volfs, from the command
line or from /etc/fstab. It mounts as 'volfs mount' does: the server runs in
the background and the helper returns once the mount serves.

SOURCE is what is mounted, and what findmnt and df show:
  VG            every public logical volume of the volume group VG
  VG/POOL       the same, new files are thin volumes in POOL
  /dev/...      block devices matched by this glob (as -o device=GLOB)
  volfs         anything, when -o device=GLOB or -o vg=VG say what to mount:
                a label
Use the VG or the glob as the source in /etc/fstab: mount -a knows a line is
mounted when findmnt shows its source.

OPTIONS are the flags of 'volfs mount' without their dashes: device=GLOB
(repeatable), vg=, thin-pool=, tag=, state-dir=, read-only, io-uring=false,
allow-other=false, log-file=, log-level=, debug, ... ('_' may stand for '-':
allow_other). A value with commas is quoted: device="/dev/a,b".
Besides them:
  ro, rw                   read-only, read-write
  defaults, auto, noauto, _netdev, nofail, user, users, nouser, owner,
  group, x-*, comment=*    for mount(8) and systemd; ignored here
  nosuid, nodev, suid, dev, exec, noexec, atime, noatime, relatime,
  strictatime, diratime, nodiratime, lazytime, async, default_permissions
                           accepted and ignored: volfs mounts are always
                           nosuid, nodev and default_permissions, and volfs
                           keeps each file's atime itself
  sync, dirsync, foreground, remount  refused
Any other option is an error, unless -s is given (then it is ignored with a
warning).

Exit status (as mount(8)): 0 mounted, 1 a mistake in the command line or the
options, 32 the mount failed.`,
		Example: `  mount -t fuse.volfs vg0 /var/lib/images
  mount -t fuse.volfs vg0/pool /var/lib/images -o tag=vms,log-level=warn
  mount -t fuse.volfs volfs /mnt/images -o device=/dev/zvol/tank/vms/*,ro

  # /etc/fstab
  vg0   /var/lib/images  fuse.volfs  nofail,x-systemd.before=libvirtd.service  0 0
  volfs /mnt/images      fuse.volfs  device=/dev/disk/by-id/nvme-*,ro          0 0`,
		Args:              exactArgs(2, "SOURCE and MOUNTPOINT"),
		SilenceUsage:      true,
		SilenceErrors:     true,
		DisableAutoGenTag: true,
		RunE:              func(cmd *cobra.Command, args []string) error { return h.run(args[0], args[1]) },
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see %s --help)", err, helperName)}
	})
	f := cmd.Flags()
	f.StringArrayVarP(&h.opts, "options", "o", nil, "mount options, separated by commas")
	f.BoolVarP(&h.sloppy, "sloppy", "s", false, "ignore unknown mount options (with a warning)")
	f.BoolVarP(&h.fake, "fake", "f", false, "check the options, but do not mount")
	f.BoolVarP(&h.noMtab, "no-mtab", "n", false, "accepted; there is no /etc/mtab to write")
	f.BoolVarP(&h.verbose, "verbose", "v", false, "print the volfs mount command it runs")
	f.StringVarP(&h.namespace, "namespace", "N", "", "not supported: run mount(8) in the namespace")
	f.StringVarP(&h.fstype, "types", "t", "", "the file system type, fuse.volfs")
	return cmd
}

func (h *mountHelper) run(source, dir string) error {
	if h.namespace != "" {
		return usagef("-N (mount in another namespace) is not supported: run mount inside the namespace")
	}
	if t := h.fstype; t != "" && t != "fuse.volfs" && t != "volfs" {
		return usagef("file system type %q: this helper mounts fuse.volfs", t)
	}
	args, warnings, err := helperArgs(source, dir, h.opts, h.sloppy, newMountCmd().Flags())
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "%s: %s\n", helperName, w)
	}
	if err != nil {
		return err
	}
	if h.verbose {
		fmt.Fprintf(os.Stderr, "%s: volfs mount %s\n", helperName, shellQuote(args))
	}
	if h.fake {
		return nil
	}
	// The mount command starts its server as `volfs mount --foreground
	// os.Args[2:]...`: make os.Args the equivalent volfs command line.
	os.Args = append([]string{os.Args[0], "mount"}, args...)
	root := newRootCmd()
	root.SetArgs(os.Args[1:])
	return root.Execute()
}

// helperArgs translates mount(8)'s SOURCE, MOUNTPOINT and -o options into
// the arguments of `volfs mount`. An option is a flag of flags (the mount
// command's) without its dashes.
func helperArgs(source, dir string, optstrs []string, sloppy bool, flags *pflag.FlagSet) (args, warnings []string, err error) {
	var opts []string
	for _, o := range optstrs {
		opts = append(opts, splitOptions(o)...)
	}
	named := false // vg= or device= say what to mount: SOURCE is a label
	for _, o := range opts {
		name, value, hasValue := strings.Cut(o, "=")
		value = unquote(value)
		switch {
		case name == "":
			continue
		case name == "ro":
			args = append(args, "--read-only")
			continue
		case name == "rw":
			args = append(args, "--read-only=false")
			continue
		case ignoredOption(name):
			continue
		case name == "remount":
			return nil, warnings, usagef("remount is not supported: unmount (volfs umount) and mount again")
		case name == "sync" || name == "dirsync":
			return nil, warnings, usagef("option %s is not supported: writes go to the device directly, and fsync and fdatasync flush its cache", name)
		}
		fname := strings.ReplaceAll(name, "_", "-")
		fl := flags.Lookup(fname)
		switch {
		case fname == "foreground":
			return nil, warnings, usagef("option foreground is not for mount(8), which waits for its helper: run volfs mount --foreground, or the volfs@.service unit")
		case fl == nil && sloppy:
			warnings = append(warnings, fmt.Sprintf("ignoring unknown option %q", name))
			continue
		case fl == nil:
			return nil, warnings, usagef("unknown mount option %q: the options are the flags of volfs mount (see volfs mount --help; -s ignores unknown options)", name)
		case hasValue:
			args = append(args, "--"+fname+"="+value)
		case fl.NoOptDefVal != "": // a boolean flag
			args = append(args, "--"+fname)
		default:
			return nil, warnings, usagef("option %s needs a value: %s=...", name, name)
		}
		if fname == "vg" || fname == "device" {
			named = true
		}
	}
	switch {
	case named:
		// SOURCE is a label such as "volfs", whatever it looks like:
		// mount(8) turns a label that names a file in its working
		// directory into that file's path.
	case strings.HasPrefix(source, "/"):
		args = append(args, "--device="+source)
	default:
		vg, pool, hasPool := strings.Cut(source, "/")
		if vg == "" || hasPool && (pool == "" || strings.Contains(pool, "/")) {
			return nil, warnings, usagef("source %q: want VG, VG/POOL, a /dev glob, or a label with -o device=GLOB", source)
		}
		pre := []string{"--vg=" + vg}
		if hasPool {
			pre = append(pre, "--thin-pool="+pool)
		}
		args = append(pre, args...)
	}
	return append(args, "--", dir), warnings, nil
}

// ignoredOption reports the options that are for mount(8) or systemd, and
// those that change nothing on a volfs mount (see the helper's help).
func ignoredOption(name string) bool {
	switch name {
	case "defaults", "auto", "noauto", "_netdev", "nofail", "user", "users", "nouser", "owner", "group",
		"nosuid", "nodev", "suid", "dev", "exec", "noexec",
		"atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
		"diratime", "nodiratime", "lazytime", "nolazytime", "async", "default_permissions":
		return true
	}
	return strings.HasPrefix(name, "x-") || name == "comment"
}

// splitOptions splits a mount option string at commas outside double
// quotes, as libmount does.
func splitOptions(s string) []string {
	var out []string
	quoted, start := false, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

// shellQuote joins args for a human to read or paste into a shell.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}()<>|&;#~") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// source is what is mounted, as findmnt and df show it: VG, VG/POOL, or
// the device globs.
func (c *mountCmd) source() string {
	if c.vg != "" {
		if c.thinPool != "" {
			return c.vg + "/" + c.thinPool
		}
		return c.vg
	}
	return strings.Join(c.devices, ",")
}
