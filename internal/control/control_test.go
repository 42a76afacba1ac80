package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func newServer(t *testing.T) (*Server, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the control socket serves root only; run as root")
	}
	path := filepath.Join(t.TempDir(), "c.sock")
	s, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(s.Close)
	return s, path
}

// call dials the socket at path directly (Call derives the path from a
// mount point).
func call(t *testing.T, path, op string, args, result any, progress func(Progress)) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return callPath(ctx, path, path, op, args, result, progress)
}

func TestRoundTrip(t *testing.T) {
	s, path := newServer(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", st.Mode().Perm())
	}
	s.Handle("echo", func(ctx context.Context, args json.RawMessage, progress func(Progress)) (any, error) {
		var in struct{ N int64 }
		if err := json.Unmarshal(args, &in); err != nil {
			return nil, err
		}
		for i := int64(1); i <= in.N; i++ {
			progress(Progress{Done: i, Total: in.N})
		}
		return map[string]int64{"n": in.N}, nil
	})
	s.Handle("busy", func(ctx context.Context, args json.RawMessage, progress func(Progress)) (any, error) {
		return nil, fmt.Errorf("image web is open by qemu (pid 7): %w", syscall.EBUSY)
	})
	var got struct{ N int64 }
	var seen []int64
	if err := call(t, path, "echo", map[string]int64{"N": 3}, &got, func(p Progress) { seen = append(seen, p.Done) }); err != nil {
		t.Fatal(err)
	}
	if got.N != 3 || len(seen) != 3 || seen[2] != 3 {
		t.Errorf("result %+v progress %v", got, seen)
	}
	err = call(t, path, "busy", nil, nil, nil)
	if !errors.Is(err, syscall.EBUSY) || err.Error() != "image web is open by qemu (pid 7): device or resource busy" {
		t.Errorf("error %v (%T), want EBUSY with the server's message", err, err)
	}
	err = call(t, path, "nope", nil, nil, nil)
	if !errors.Is(err, syscall.ENOTSUP) {
		t.Errorf("unknown op: %v, want ENOTSUP", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	_, path := newServer(t)
	if _, err := Listen(path, nil); err == nil {
		t.Fatal("a second server took a live socket")
	}
	// A socket file nobody listens on (a killed server) is replaced.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	s1, err := Listen(stale, nil)
	if err != nil {
		t.Fatal(err)
	}
	s1.ln.SetUnlinkOnClose(false)
	s1.Close()
	s2, err := Listen(stale, nil)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	s2.Close()
}

func TestNoServer(t *testing.T) {
	err := Call(context.Background(), filepath.Join(t.TempDir(), "not-mounted"), "status", nil, nil, nil)
	if !errors.Is(err, ErrNoServer) {
		t.Errorf("got %v, want ErrNoServer", err)
	}
}

// A client that hangs up before the answer cancels the operation (a clone
// by copy then removes what it copied).
func TestHangupCancels(t *testing.T) {
	s, path := newServer(t)
	cancelled := make(chan error, 1)
	s.Handle("long", func(ctx context.Context, _ json.RawMessage, progress func(Progress)) (any, error) {
		progress(Progress{Done: 1, Total: 2})
		select {
		case <-ctx.Done():
			cancelled <- ctx.Err()
		case <-time.After(10 * time.Second):
			cancelled <- errors.New("not cancelled")
		}
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithCancel(context.Background())
	err := callPath(ctx, path, path, "long", nil, nil, func(Progress) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v", err)
	}
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("server side: %v", err)
	}
}

type echoArgs struct {
	Image string `json:"image"`
	N     int64  `json:"n"`
}

// FuzzRequest sends arbitrary request lines to a live server: whatever a
// client sends, the server answers with exactly one final line (last),
// keeps serving, refuses what is not a request (EINVAL) or an op it does
// not know (ENOTSUP), and hands a handler the arguments as sent.
func FuzzRequest(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("the control socket serves root only; run as root")
	}
	path := filepath.Join(f.TempDir(), "c.sock")
	s, err := Listen(path, nil)
	if err != nil {
		f.Fatal(err)
	}
	go s.Serve()
	f.Cleanup(s.Close)
	s.Handle("echo", func(ctx context.Context, raw json.RawMessage, progress func(Progress)) (any, error) {
		var a echoArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, fmt.Errorf("bad arguments %s: %w", raw, syscall.EINVAL)
		}
		progress(Progress{Done: 1, Total: 1, What: a.Image})
		return a, nil
	})
	for _, s := range []string{`{"op":"echo","args":{"image":"web","n":3}}`, `{"op":"echo","args":[1]}`, `{"op":"echo"}`,
		`{"op":"ls"}`, `{"op":1}`, `{`, ``, `null`, `{"op":"echo","args":{"image":"\u0000/../x","n":-9223372036854775808}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		line = bytes.ReplaceAll(line, []byte("\n"), nil)
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(append(line, '\n')); err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(c)
		var rs []response
		for {
			var r response
			if err := dec.Decode(&r); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("%q: reading the answer: %v", line, err)
				}
				break
			}
			rs = append(rs, r)
		}
		if len(rs) == 0 || !rs[len(rs)-1].Final {
			t.Fatalf("%q: answers %+v, want a final one last", line, rs)
		}
		for _, r := range rs[:len(rs)-1] {
			if r.Final || r.Progress == nil {
				t.Fatalf("%q: answers %+v", line, rs)
			}
		}
		last := rs[len(rs)-1]
		var req Request
		var want echoArgs
		switch {
		case json.Unmarshal(line, &req) != nil:
			if last.Errno != "EINVAL" {
				t.Fatalf("%q is no request, answered %+v", line, last)
			}
		case req.Op != "echo":
			if last.Errno != "ENOTSUP" {
				t.Fatalf("%q: unknown op, answered %+v", line, last)
			}
		case json.Unmarshal(req.Args, &want) != nil:
			if last.Errno != "EINVAL" || last.Result != nil {
				t.Fatalf("%q: bad arguments, answered %+v", line, last)
			}
		default:
			var got echoArgs
			if last.Error != "" || json.Unmarshal(last.Result, &got) != nil || got != want {
				t.Fatalf("%q: answered %+v, want %+v", line, last, want)
			}
		}
	})
}

// FuzzResponse answers a client with arbitrary bytes, as a broken or
// foreign server might: Call returns (no hang, no panic), an error when
// there is no final answer, and the server's error with its errno.
func FuzzResponse(f *testing.F) {
	for _, s := range []string{`{"progress":{"done":1,"total":2}}` + "\n" + `{"result":{"n":3},"final":true}`,
		`{"error":"image web is open","errno":"EBUSY","final":true}`, `{"error":"x","errno":"ENOSUCH","final":true}`,
		`{"progress":{"done":1}}`, `{"result":[1],"final":true}`, `{"final":true}`, `{"result":"x"}`, `[`, ``} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, answer []byte) {
		path := filepath.Join(dir, "s")
		_ = os.Remove(path)
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = bufio.NewReader(c).ReadBytes('\n')
			_, _ = c.Write(answer)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var res struct{ N int64 }
		err = callPath(ctx, path, "/mnt", "echo", map[string]int{"n": 1}, &res, func(Progress) {})
		if ctx.Err() != nil {
			t.Fatalf("%q: no answer in 10 s", answer)
		}
		dec := json.NewDecoder(bytes.NewReader(answer))
		final := false
		var r response
		for !final {
			r = response{}
			if dec.Decode(&r) != nil {
				break
			}
			final = r.Final || r.Progress == nil
		}
		var ce *Error
		switch {
		case !final && err == nil:
			t.Fatalf("%q: no final answer, no error", answer)
		case final && r.Error != "" && (!errors.As(err, &ce) || ce.Msg != r.Error || ce.Errno != errnoValue(r.Errno)):
			t.Fatalf("%q: error %v, want the server's %q", answer, err, r.Error)
		}
	})
}
