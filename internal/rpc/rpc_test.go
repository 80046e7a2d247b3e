package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// guard bounds every wait in these tests; reaching it is a failure.
const guard = 10 * time.Second

// recorder is a slog.Handler that hands every record to the test.
type recorder struct{ records chan slog.Record }

func (r recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r recorder) Handle(_ context.Context, rec slog.Record) error {
	select {
	case r.records <- rec.Clone():
	default: // tests only look at the first few records
	}
	return nil
}
func (r recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return attrsHandler{r, as}
}
func (r recorder) WithGroup(string) slog.Handler { return r }

type attrsHandler struct {
	recorder
	attrs []slog.Attr
}

func (h attrsHandler) Handle(ctx context.Context, rec slog.Record) error {
	rec = rec.Clone()
	rec.AddAttrs(h.attrs...)
	return h.recorder.Handle(ctx, rec)
}

func attr(rec slog.Record, key string) (slog.Value, bool) {
	var v slog.Value
	found := false
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v, found = a.Value, true
			return false
		}
		return true
	})
	return v, found
}

// waitLog returns the first record with message msg and method attr method.
func waitLog(t *testing.T, rec recorder, msg, method string) slog.Record {
	t.Helper()
	deadline := time.After(guard)
	for {
		select {
		case r := <-rec.records:
			if m, _ := attr(r, "method"); r.Message == msg && m.String() == method {
				return r
			}
		case <-deadline:
			t.Fatalf("no %q log record for %s", msg, method)
		}
	}
}

type testServer struct {
	srv    *Server
	path   string
	logs   recorder
	served chan error // receives Serve's result
}

// startServer serves the handlers of register on a fresh socket.
func startServer(t *testing.T, register func(*Server)) *testServer {
	t.Helper()
	ts := &testServer{
		path:   filepath.Join(t.TempDir(), "d.sock"),
		logs:   recorder{make(chan slog.Record, 1000)},
		served: make(chan error, 1),
	}
	ts.srv = NewServer(slog.New(ts.logs))
	register(ts.srv)
	ln, err := ListenUnix(ts.path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { ts.served <- ts.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		ts.srv.Shutdown(ctx)
	})
	return ts
}

func (ts *testServer) dial(t *testing.T) *Client {
	t.Helper()
	c, err := Dial(context.Background(), ts.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	t.Cleanup(cancel)
	return ctx
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(guard):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

type nameParams struct {
	Name string `json:"name"`
}

func echo(_ context.Context, raw json.RawMessage, _ *Stream) (any, error) {
	var p nameParams
	if err := DecodeParams(raw, &p); err != nil {
		return nil, err
	}
	return map[string]string{"hello": p.Name}, nil
}

// blocker returns a handler that reports when it starts and returns the
// cancellation cause once its ctx ends.
func blocker(started chan<- struct{}, causes chan<- error) HandlerFunc {
	return func(ctx context.Context, _ json.RawMessage, _ *Stream) (any, error) {
		started <- struct{}{}
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil, ctx.Err()
	}
}

func wantCode(t *testing.T, err error, code int, msgPart string) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v (%T), want *Error with code %d", err, err, code)
	}
	if e.Code != code || !strings.Contains(e.Message, msgPart) {
		t.Fatalf("got error code %d %q, want code %d containing %q", e.Code, e.Message, code, msgPart)
	}
	return e
}

func TestCallResult(t *testing.T) {
	ts := startServer(t, func(s *Server) { s.Handle("echo", echo) })
	c := ts.dial(t)
	var got map[string]string
	if err := c.Call(testCtx(t), "echo", nameParams{"vm1"}, &got); err != nil {
		t.Fatal(err)
	}
	if got["hello"] != "vm1" {
		t.Fatalf("got %v", got)
	}
	// No params at all decodes to the zero value.
	if err := c.Call(testCtx(t), "echo", nil, &got); err != nil || got["hello"] != "" {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestMethodNotFound(t *testing.T) {
	ts := startServer(t, func(s *Server) {})
	err := ts.dial(t).Call(testCtx(t), "vm.frobnicate", nil, nil)
	wantCode(t, err, CodeMethodNotFound, "vm.frobnicate")
}

func TestInvalidParams(t *testing.T) {
	ts := startServer(t, func(s *Server) { s.Handle("echo", echo) })
	err := ts.dial(t).Call(testCtx(t), "echo", map[string]any{"name": "x", "foo": 1}, nil)
	wantCode(t, err, CodeInvalidParams, `unknown field "foo"`)
}

func TestDecodeParams(t *testing.T) {
	for _, tc := range []struct {
		raw, wantErr string
	}{
		{``, ""},
		{`null`, ""},
		{`{"name":"a"}`, ""},
		{`{"name":1}`, "invalid params"},
		{`{"name":"a"} {}`, "unexpected data"},
		{`{"bar":1}`, `unknown field "bar"`},
	} {
		var p nameParams
		err := DecodeParams(json.RawMessage(tc.raw), &p)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.raw, err)
			}
			continue
		}
		if CodeOf(err) != CodeInvalidParams || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: got %v, want invalid params containing %q", tc.raw, err, tc.wantErr)
		}
	}
}

func TestErrorRoundTrip(t *testing.T) {
	notFound := Errorf(CodeNotFound, "vm %q not found", "web")
	withData := &Error{Code: CodeConflict, Message: "busy", Data: json.RawMessage(`{"owner":"x"}`)}
	cases := []struct {
		err  error
		code int
		msg  string
	}{
		{notFound, CodeNotFound, `vm "web" not found`},
		{fmt.Errorf("starting vm: %w", notFound), CodeNotFound, `starting vm: vm "web" not found`},
		{withData, CodeConflict, "busy"},
		{fmt.Errorf("waiting: %w", context.Canceled), CodeCanceled, "waiting: context canceled"},
		{errors.New("disk on fire"), CodeInternal, "disk on fire"},
	}
	ts := startServer(t, func(s *Server) {
		s.Handle("fail", func(_ context.Context, raw json.RawMessage, _ *Stream) (any, error) {
			var i int
			if err := DecodeParams(raw, &i); err != nil {
				return nil, err
			}
			return nil, cases[i].err
		})
	})
	c := ts.dial(t)
	for i, tc := range cases {
		err := c.Call(testCtx(t), "fail", i, nil)
		e := wantCode(t, err, tc.code, tc.msg)
		if e.Message != tc.msg || err.Error() != tc.msg {
			t.Errorf("case %d: message %q, want %q", i, e.Message, tc.msg)
		}
		if i == 2 && string(e.Data) != `{"owner":"x"}` {
			t.Errorf("data %s", e.Data)
		}
	}
}

func TestErrorHelpers(t *testing.T) {
	base := errors.New("base")
	e := Errorf(CodeNotFound, "wrapping: %w", base)
	if !errors.Is(e, base) || e.Error() != "wrapping: base" {
		t.Fatalf("Errorf: %v", e)
	}
	for err, want := range map[error]int{
		nil:                                   0,
		e:                                     CodeNotFound,
		fmt.Errorf("x: %w", e):                CodeNotFound,
		context.Canceled:                      CodeCanceled,
		errors.New("other"):                   CodeInternal,
		fmt.Errorf("y: %w", context.Canceled): CodeCanceled,
	} {
		if got := CodeOf(err); got != want {
			t.Errorf("CodeOf(%v) = %d, want %d", err, got, want)
		}
	}
}

func TestStreamEventsBeforeResult(t *testing.T) {
	const n = 200
	var (
		savedMu sync.Mutex
		saved   *Stream
	)
	ts := startServer(t, func(s *Server) {
		s.Handle("progress", func(_ context.Context, _ json.RawMessage, st *Stream) (any, error) {
			for i := range n {
				if err := st.Send("step", i); err != nil {
					return nil, err
				}
			}
			savedMu.Lock()
			saved = st
			savedMu.Unlock()
			return "done", nil
		})
	})
	var got []int
	var result string
	err := ts.dial(t).CallStream(testCtx(t), "progress", nil, &result, func(event string, data json.RawMessage) {
		var i int
		if event != "step" || json.Unmarshal(data, &i) != nil {
			t.Errorf("bad event %q %s", event, data)
		}
		got = append(got, i)
	})
	if err != nil || result != "done" {
		t.Fatalf("result %q, err %v", result, err)
	}
	if len(got) != n {
		t.Fatalf("got %d events, want %d", len(got), n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("event %d has data %d: out of order", i, v)
		}
	}
	savedMu.Lock()
	defer savedMu.Unlock()
	if err := saved.Send("late", nil); err == nil {
		t.Fatal("Send after the call returned succeeded")
	}
}

func TestClientCancelReachesHandler(t *testing.T) {
	started, causes := make(chan struct{}, 1), make(chan error, 1)
	ts := startServer(t, func(s *Server) { s.Handle("wait", blocker(started, causes)) })
	c := ts.dial(t)

	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error, 1)
	go func() { errc <- c.Call(ctx, "wait", nil, nil) }()
	recv(t, started, "handler start")
	cancel()
	if err := recv(t, errc, "Call to return"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Call returned %v, want context.Canceled", err)
	}
	if cause := recv(t, causes, "handler ctx cancel"); !errors.Is(cause, errCanceledByClient) {
		t.Fatalf("cause %v", cause)
	}
	rec := waitLog(t, ts.logs, "rpc call", "wait")
	if code, _ := attr(rec, "code"); code.Int64() != CodeCanceled {
		t.Fatalf("logged code %v", code)
	}
	// The connection still works.
	ts.srv.Handle("echo", echo)
	if err := c.Call(testCtx(t), "echo", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestClientCloseCancelsHandler(t *testing.T) {
	started, causes := make(chan struct{}, 1), make(chan error, 1)
	ts := startServer(t, func(s *Server) { s.Handle("wait", blocker(started, causes)) })
	c := ts.dial(t)
	errc := make(chan error, 1)
	go func() { errc <- c.Call(testCtx(t), "wait", nil, nil) }()
	recv(t, started, "handler start")
	c.Close()
	if cause := recv(t, causes, "handler ctx cancel"); !errors.Is(cause, errClientGone) {
		t.Fatalf("cause %v", cause)
	}
	if err := recv(t, errc, "Call to return"); err == nil {
		t.Fatal("Call succeeded on a closed client")
	}
	if err := c.Call(testCtx(t), "wait", nil, nil); err == nil {
		t.Fatal("Call succeeded after Close")
	}
}

func TestConcurrentCalls(t *testing.T) {
	const n = 32
	var (
		mu      sync.Mutex
		waiting int
		all     = make(chan struct{})
	)
	ts := startServer(t, func(s *Server) {
		// Each call returns only once all n are in flight at once.
		s.Handle("barrier", func(ctx context.Context, raw json.RawMessage, _ *Stream) (any, error) {
			var i int
			if err := DecodeParams(raw, &i); err != nil {
				return nil, err
			}
			mu.Lock()
			if waiting++; waiting == n {
				close(all)
			}
			mu.Unlock()
			select {
			case <-all:
				return i * 10, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		})
	})
	c := ts.dial(t)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var got int
			if err := c.Call(testCtx(t), "barrier", i, &got); err != nil {
				t.Error(err)
			} else if got != i*10 {
				t.Errorf("call %d got %d", i, got)
			}
		})
	}
	wg.Wait()
}

func TestSocketMode(t *testing.T) {
	old := syscall.Umask(0) // a permissive umask must not leak into the mode
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "d.sock")
	ln, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want socket 0600", fi.Mode())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("leftovers next to the socket: %v", entries)
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket not removed on Close: %v", err)
	}
}

func TestListenUnixLiveAndStale(t *testing.T) {
	ts := startServer(t, func(s *Server) { s.Handle("echo", echo) })
	_, err := ListenUnix(ts.path)
	if err == nil || !strings.Contains(err.Error(), "another daemon is already listening on "+ts.path) {
		t.Fatalf("ListenUnix on a live socket: %v", err)
	}
	if err := ts.dial(t).Call(testCtx(t), "echo", nil, nil); err != nil {
		t.Fatalf("live server broken by the probe: %v", err)
	}

	// A stale socket: bound, then its listener closed without unlinking.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	srv := NewServer(nil)
	srv.Handle("echo", echo)
	ln, err := ListenUnix(stale)
	if err != nil {
		t.Fatalf("ListenUnix on a stale socket: %v", err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	c, err := Dial(testCtx(t), stale)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Call(testCtx(t), "echo", nil, nil); err != nil {
		t.Fatal(err)
	}

	// Not a socket: left alone.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := ListenUnix(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("ListenUnix on a regular file: %v", err)
	}
}

func TestShutdownCancelsHandlers(t *testing.T) {
	started, causes := make(chan struct{}, 1), make(chan error, 1)
	ts := startServer(t, func(s *Server) { s.Handle("wait", blocker(started, causes)) })
	c := ts.dial(t)
	errc := make(chan error, 1)
	go func() { errc <- c.Call(testCtx(t), "wait", nil, nil) }()
	recv(t, started, "handler start")

	if err := ts.srv.Shutdown(testCtx(t)); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if cause := recv(t, causes, "handler ctx cancel"); !errors.Is(cause, errShuttingDown) {
		t.Fatalf("cause %v", cause)
	}
	if err := recv(t, ts.served, "Serve to return"); err != nil {
		t.Fatalf("Serve returned %v", err)
	}
	// The response was written before the connection closed.
	wantCode(t, recv(t, errc, "Call to return"), CodeCanceled, "")
	if err := c.Call(testCtx(t), "wait", nil, nil); !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("Call after shutdown: %v", err)
	}
	if _, err := Dial(testCtx(t), ts.path); err == nil {
		t.Fatal("Dial succeeded after shutdown")
	}
}

func TestShutdownBoundedByCtx(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	ts := startServer(t, func(s *Server) {
		s.Handle("stuck", func(context.Context, json.RawMessage, *Stream) (any, error) {
			started <- struct{}{}
			<-release // ignores its ctx
			return nil, nil
		})
	})
	c := ts.dial(t)
	errc := make(chan error, 1)
	go func() { errc <- c.Call(testCtx(t), "stuck", nil, nil) }()
	recv(t, started, "handler start")

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // don't wait at all
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := recv(t, errc, "Call to return"); !errors.Is(err, ErrConnectionLost) ||
		!strings.Contains(err.Error(), "connection to daemon lost") {
		t.Fatalf("pending Call: %v", err)
	}
}

func TestHandlerPanic(t *testing.T) {
	ts := startServer(t, func(s *Server) {
		s.Handle("boom", func(context.Context, json.RawMessage, *Stream) (any, error) { panic("kaboom") })
		s.Handle("echo", echo)
	})
	c := ts.dial(t)
	wantCode(t, c.Call(testCtx(t), "boom", nil, nil), CodeInternal, "panicked")
	rec := waitLog(t, ts.logs, "rpc handler panicked", "boom")
	if stack, _ := attr(rec, "stack"); !strings.Contains(stack.String(), "goroutine") {
		t.Fatalf("no stack logged: %q", stack)
	}
	if err := c.Call(testCtx(t), "echo", nil, nil); err != nil {
		t.Fatalf("server broken after panic: %v", err)
	}
}

func TestOversize(t *testing.T) {
	big := strings.Repeat("x", MaxMessageSize)
	ts := startServer(t, func(s *Server) {
		s.Handle("big", func(context.Context, json.RawMessage, *Stream) (any, error) { return big, nil })
		s.Handle("echo", echo)
	})
	c := ts.dial(t)

	// Client refuses to send it.
	err := c.Call(testCtx(t), "echo", nameParams{big}, nil)
	if err == nil || !strings.Contains(err.Error(), "exceeds the 16 MiB limit") {
		t.Fatalf("oversize request: %v", err)
	}
	// Server refuses to send it, and says why.
	wantCode(t, c.Call(testCtx(t), "big", nil, nil), CodeInternal, "too large")
	if err := c.Call(testCtx(t), "echo", nil, nil); err != nil {
		t.Fatalf("client broken after oversize: %v", err)
	}

	// A peer sending an oversize line gets an error, then the connection closes.
	nc, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	go func() {
		nc.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"echo","params":"` + big + `"}` + "\n"))
	}()
	nc.SetReadDeadline(time.Now().Add(guard))
	r := bufio.NewReader(nc)
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var m message
	if err := json.Unmarshal(line, &m); err != nil || m.Error == nil {
		t.Fatalf("got %s (%v)", line, err)
	}
	wantCode(t, m.Error, CodeInvalidRequest, "exceeds the 16 MiB limit")
	if string(m.ID) != "null" {
		t.Fatalf("id %s, want null", m.ID)
	}
	if _, err := r.ReadBytes('\n'); err == nil {
		t.Fatal("connection still open after an oversize message")
	}
}

// TestRawProtocol speaks the wire protocol directly.
func TestRawProtocol(t *testing.T) {
	started, causes := make(chan struct{}, 1), make(chan error, 1)
	ts := startServer(t, func(s *Server) {
		s.Handle("echo", echo)
		s.Handle("wait", blocker(started, causes))
	})
	nc, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(guard))
	r := bufio.NewReader(nc)
	for _, tc := range []struct{ send, want string }{
		{`{"jsonrpc":"2.0","id":"a","method":"echo","params":{"name":"x"}}`,
			`{"jsonrpc":"2.0","id":"a","result":{"hello":"x"}}`},
		{`{"jsonrpc":"2.0","method":"echo"}` + "\n" + // notification: ignored
			`{"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":99}}` + "\n" + // unknown id: ignored
			`{"jsonrpc":"2.0","id":7,"method":"echo"}`,
			`{"jsonrpc":"2.0","id":7,"result":{"hello":""}}`},
		{`{not json`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error: invalid JSON"}}`},
		{`[{"jsonrpc":"2.0","id":1,"method":"echo"}]`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch requests are not supported"}}`},
		{`{"jsonrpc":"1.0","id":2,"method":"echo"}`,
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32600,"message":"invalid request: need \"jsonrpc\":\"2.0\" and a method"}}`},
		{`{"jsonrpc":"2.0","id":{},"method":"echo"}`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: id must be a string or a number"}}`},
		{`{"jsonrpc":"2.0","id":3,"method":"nope"}`,
			`{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"method not found: nope"}}`},
	} {
		if _, err := nc.Write([]byte(tc.send + "\n")); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSuffix(line, "\n"); got != tc.want {
			t.Errorf("sent %s\n got %s\nwant %s", tc.send, got, tc.want)
		}
	}
	if t.Failed() {
		return
	}

	// A long call: a second request with its id is refused, rpc.cancel ends it.
	nc.Write([]byte(`{"jsonrpc":"2.0","id":"w","method":"wait"}` + "\n"))
	recv(t, started, "handler start")
	nc.Write([]byte(`{"jsonrpc":"2.0","id":"w","method":"echo"}` + "\n"))
	nc.Write([]byte(`{"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":"w"}}` + "\n"))
	for _, want := range []string{
		`{"jsonrpc":"2.0","id":"w","error":{"code":-32600,"message":"request id \"w\" is already in flight"}}`,
		`{"jsonrpc":"2.0","id":"w","error":{"code":5,"message":"context canceled"}}`,
	} {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSuffix(line, "\n"); got != want {
			t.Errorf(" got %s\nwant %s", got, want)
		}
	}
	if cause := recv(t, causes, "handler ctx cancel"); !errors.Is(cause, errCanceledByClient) {
		t.Fatalf("cause %v", cause)
	}
}

func TestDialNoDaemon(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.sock")
	if _, err := Dial(testCtx(t), path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Dial: %v", err)
	}
}
