package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	volfs "github.com/volfs/volfs/fs"
	"github.com/volfs/volfs/internal/mountinfo"
)

// sdNotify tells systemd (Type=notify) about the server's state: READY=1
// once the mount serves, STATUS= lines for `systemctl status`, STOPPING=1
// once the mount is gone. Outside systemd it does nothing.
func sdNotify(state string) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return
	}
	if sock[0] == '@' { // abstract socket
		sock = "\x00" + sock[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = conn.Write([]byte(state))
}

// handleSignals serves the signals of a mounted server until it exits:
// SIGHUP reopens the log file (logrotate) and never stops the server;
// SIGTERM and SIGINT unmount, unless the mount is busy, which keeps it
// serving and says who holds it.
func handleSignals(sigs <-chan os.Signal, srv *volfs.Server, mnt string, log *slog.Logger, logw *logWriter) {
	for s := range sigs {
		if s == syscall.SIGHUP {
			if logw.path == "" {
				log.Info("SIGHUP: logging to stderr, no log file to reopen")
				continue
			}
			if err := logw.reopen(); err != nil {
				log.Error("SIGHUP: cannot reopen the log file; still logging to the old one",
					slog.String("path", logw.path), slog.Any("err", err))
				continue
			}
			log.Info("SIGHUP: reopened the log file", slog.String("path", logw.path))
			continue
		}
		log.Info("unmounting on signal", slog.String("signal", s.String()))
		sdNotify("STATUS=unmounting on " + s.String())
		if err := srv.Unmount(); err != nil {
			if ok, _ := mountinfo.MountPoint(mnt); !ok {
				// Unmounted already (umount(8), then systemd's
				// SIGTERM to what is left of a mount unit): the
				// server is finishing anyway.
				log.Info("already unmounted; finishing")
				continue
			}
			h := holdersWithin(mnt, time.Now().Add(5*time.Second))
			log.Error("unmount failed; still serving", slog.Any("err", err), slog.String("held_by", h))
			if h == "" {
				h = "a process has a file or directory open in it"
			}
			sdNotify(fmt.Sprintf("STATUS=serving %s; unmount refused, busy: %s", mnt, h))
		}
	}
}
