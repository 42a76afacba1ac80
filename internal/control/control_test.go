package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
