// Package control is the one channel between the volfs CLI and a running
// server: a root-only Unix socket per mount under /run/volfs. Commands that
// must go through the server (status, ls, snapshots, clones) are handlers
// registered by name; the server answers each connection's one request
// with any number of progress lines and one final line, all JSON.
//
// It knows nothing of file systems or volumes, and it must never serve a
// peer that is not root: the socket is 0600 and every connection's
// credentials (SO_PEERCRED) are checked.
package control

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Dir holds the sockets (and the servers' pid files).
const Dir = "/run/volfs"

// SocketPath is the control socket of the server of mount point mnt (an
// absolute, symlink-free path).
func SocketPath(mnt string) string {
	h := sha256.Sum256([]byte(mnt))
	return filepath.Join(Dir, hex.EncodeToString(h[:8])+".sock")
}

// Request is what a client sends: one JSON line.
type Request struct {
	Op   string          `json:"op"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Progress is sent by long operations before their result.
type Progress struct {
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
	What  string `json:"what,omitempty"`
}

// response is one line from the server: progress, or the final answer.
type response struct {
	Progress *Progress       `json:"progress,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    string          `json:"error,omitempty"`
	// Errno names the error's errno (EBUSY, ENOENT...) when it has one,
	// so the CLI can exit as the equivalent file operation would.
	Errno string `json:"errno,omitempty"`
	Final bool   `json:"final,omitempty"`
}

// Handler serves one operation. args is the request's raw arguments; the
// result is sent as JSON. progress may be called any number of times.
type Handler func(ctx context.Context, args json.RawMessage, progress func(Progress)) (any, error)

// Server serves a mount's control socket.
type Server struct {
	path     string
	log      *slog.Logger
	ln       *net.UnixListener
	mu       sync.Mutex
	handlers map[string]Handler
	wg       sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
}

// Listen creates the socket at path (replacing a stale one left by a dead
// server) and returns a server with no handlers yet.
func Listen(path string, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	// A socket that accepts connections belongs to a live server; the
	// caller holds the mount's lock, so one that does not is stale.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is in use by another server", path)
	}
	_ = os.Remove(path)
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{path: path, log: log, ln: ln, handlers: map[string]Handler{}, ctx: ctx, cancel: cancel}, nil
}

// Handle registers the handler of op.
func (s *Server) Handle(op string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[op] = h
}

// Serve accepts connections until Close.
func (s *Server) Serve() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(c)
		}()
	}
}

// Close stops accepting, cancels running handlers, waits for them, and
// removes the socket.
func (s *Server) Close() {
	s.cancel()
	s.ln.Close()
	s.wg.Wait()
}

func peerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return cred.Uid, nil
}

func (s *Server) serveConn(c *net.UnixConn) {
	defer c.Close()
	enc := json.NewEncoder(c)
	var wmu sync.Mutex
	send := func(r response) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = enc.Encode(r)
	}
	if uid, err := peerUID(c); err != nil || uid != 0 {
		send(response{Error: "the control socket serves root only", Errno: "EPERM", Final: true})
		return
	}
	line, err := bufio.NewReaderSize(c, 64<<10).ReadBytes('\n')
	if err != nil {
		return
	}
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		send(response{Error: "bad request: " + err.Error(), Errno: "EINVAL", Final: true})
		return
	}
	s.mu.Lock()
	h := s.handlers[req.Op]
	s.mu.Unlock()
	if h == nil {
		send(response{Error: fmt.Sprintf("this server does not know %q (is the volfs binary newer than the running server?)", req.Op), Errno: "ENOTSUP", Final: true})
		return
	}
	// A client sends one line and then only reads: a read that returns
	// means it hung up (Ctrl-C, its timeout), and an operation nobody waits
	// for any more is cancelled (a clone by copy removes what it copied).
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go func() {
		_, _ = c.Read(make([]byte, 1))
		cancel()
	}()
	res, err := h(ctx, req.Args, func(p Progress) { send(response{Progress: &p}) })
	if err != nil {
		r := response{Error: err.Error(), Final: true}
		var e syscall.Errno
		if errors.As(err, &e) {
			r.Errno = unix.ErrnoName(e)
		}
		send(r)
		return
	}
	b, err := json.Marshal(res)
	if err != nil {
		send(response{Error: "encoding the result: " + err.Error(), Final: true})
		return
	}
	send(response{Result: b, Final: true})
}

// Error is an error the server answered.
type Error struct {
	Msg   string
	Errno syscall.Errno // 0 if the server named none
}

func (e *Error) Error() string { return e.Msg }

// Unwrap lets errors.Is(err, syscall.EBUSY) work on the client side.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// ErrNoServer means no server answers at the socket: the mount is not a
// volfs mount, or its server is gone.
var ErrNoServer = errors.New("no volfs server answers for this mount")

// Call sends one request to the server of mount point mnt and decodes its
// result into result (if not nil). progress, if not nil, receives the
// server's progress reports.
func Call(ctx context.Context, mnt, op string, args any, result any, progress func(Progress)) error {
	return callPath(ctx, SocketPath(mnt), mnt, op, args, result, progress)
}

func callPath(ctx context.Context, path, mnt, op string, args any, result any, progress func(Progress)) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%s: %w", mnt, ErrNoServer)
		}
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("control socket of %s: %w: the control socket serves root only: volfs must run as root", mnt, err)
		}
		return fmt.Errorf("control socket of %s: %w", mnt, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	req := Request{Op: op}
	if args != nil {
		if req.Args, err = json.Marshal(args); err != nil {
			return err
		}
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return fmt.Errorf("control socket of %s: %w", mnt, err)
	}
	dec := json.NewDecoder(bufio.NewReader(c))
	for {
		var r response
		if err := dec.Decode(&r); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("control socket of %s: the server closed the connection without an answer: %w", mnt, err)
		}
		if r.Progress != nil && !r.Final {
			if progress != nil {
				progress(*r.Progress)
			}
			continue
		}
		if r.Error != "" {
			e := &Error{Msg: r.Error}
			if r.Errno != "" {
				e.Errno = errnoValue(r.Errno)
			}
			return e
		}
		if result != nil && len(r.Result) > 0 {
			return json.Unmarshal(r.Result, result)
		}
		return nil
	}
}

// errnoValue is the errno whose name (unix.ErrnoName) is name, or 0 (for
// "" too, the name of numbers that have none).
func errnoValue(name string) syscall.Errno {
	if name == "" {
		return 0
	}
	for e := syscall.Errno(1); e < 256; e++ {
		if unix.ErrnoName(e) == name {
			return e
		}
	}
	return 0
}
