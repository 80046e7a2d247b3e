package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"
)

// HandlerFunc serves one method. params is the raw "params" member (nil when
// absent; see DecodeParams). ctx is cancelled when the call is cancelled, the
// client goes away or the server shuts down. s sends events to the caller.
// A returned error is sent as an error object with code CodeOf(err) and
// message err.Error(); otherwise result is marshalled as the call's result.
type HandlerFunc func(ctx context.Context, params json.RawMessage, s *Stream) (result any, err error)

// Cancellation causes, reported by context.Cause on a handler's context.
var (
	errCanceledByClient = errors.New("rpc: call canceled by client")
	errClientGone       = errors.New("rpc: client disconnected")
	errShuttingDown     = errors.New("rpc: server shutting down")
)

// Server dispatches JSON-RPC calls to handlers. Register handlers with Handle
// before or while serving.
type Server struct {
	log    *slog.Logger
	ctx    context.Context // parent of every call's context
	cancel context.CancelCauseFunc

	mu        sync.Mutex
	handlers  map[string]HandlerFunc
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	closing   bool
	calls     sync.WaitGroup // in-flight handlers
}

// NewServer returns a server that logs to log (nil discards logs).
func NewServer(log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Server{
		log:       log,
		ctx:       ctx,
		cancel:    cancel,
		handlers:  make(map[string]HandlerFunc),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
	}
}

// Handle registers h for method. It panics on an empty or reserved ("rpc.")
// method name, a nil handler or a duplicate registration.
func (s *Server) Handle(method string, h HandlerFunc) {
	if method == "" || strings.HasPrefix(method, "rpc.") || h == nil {
		panic(fmt.Sprintf("rpc: invalid registration of method %q", method))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.handlers[method]; dup {
		panic(fmt.Sprintf("rpc: method %q registered twice", method))
	}
	s.handlers[method] = h
}

// ListenUnix listens on a Unix socket at path with mode 0600 whatever the
// umask: the socket is bound in a private 0700 directory, chmodded, then
// hard-linked into place (which fails rather than replacing a racing
// daemon's socket). An existing socket at path is removed if nothing answers
// on it (stale); if something does, ListenUnix fails. Closing the listener
// removes path.
func ListenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("another daemon is already listening on %s", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("probing existing socket %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}

	tmpDir, err := os.MkdirTemp(filepath.Dir(path), ".sock") // created 0700
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false) // the temporary name goes with tmpDir
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		ln.Close()
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("another daemon is already listening on %s", path)
		}
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return &unixListener{UnixListener: ln, path: path}, nil
}

type unixListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() { os.Remove(l.path) })
	return err
}

// Serve accepts connections on ln until Shutdown (then it returns nil) or a
// fatal accept error (returned); running out of file descriptors is retried.
// ln is closed on return.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	for {
		nc, err := ln.Accept()
		c := &serverConn{srv: s, nc: nc, calls: make(map[string]context.CancelCauseFunc)}
		s.mu.Lock()
		closing := s.closing
		if err == nil && !closing {
			s.conns[c] = struct{}{}
		}
		s.mu.Unlock()
		switch {
		case closing:
			if nc != nil {
				nc.Close()
			}
			return nil
		case errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE):
			s.log.Warn("rpc: accept failed, retrying", "err", err)
			time.Sleep(100 * time.Millisecond) // wait for descriptors to free up
		case err != nil:
			return err
		default:
			go c.serve()
		}
	}
}

// Shutdown stops accepting connections, cancels the contexts of in-flight
// calls and waits for their handlers to return (and their responses to be
// written) until ctx ends. Then it closes all connections. It returns
// ctx.Err() if handlers were still running.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	s.cancel(errShuttingDown)

	done := make(chan struct{})
	go func() { s.calls.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}

	s.mu.Lock()
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	return err
}

// serverConn is one client connection.
type serverConn struct {
	srv *Server
	nc  net.Conn

	wmu  sync.Mutex // serialises writes
	werr error      // first write error; the connection is dead after it

	mu    sync.Mutex
	calls map[string]context.CancelCauseFunc // in-flight calls by raw id
}

// serve reads messages until the connection ends, then cancels what is
// still running, waits for it and closes the connection.
func (c *serverConn) serve() {
	ctx, cancel := context.WithCancelCause(c.srv.ctx)
	var handlers sync.WaitGroup
	r := bufio.NewReaderSize(c.nc, 64<<10)
	for {
		line, err := readLine(r)
		if errors.Is(err, errTooLarge) {
			c.writeError(nil, Errorf(CodeInvalidRequest, "%v", err))
			break
		}
		if err != nil {
			break
		}
		c.dispatch(ctx, line, &handlers)
	}

	c.wmu.Lock()
	if c.werr == nil {
		c.werr = errClientGone // nobody reads what handlers would still send
	}
	c.wmu.Unlock()
	cancel(errClientGone)
	handlers.Wait()
	c.nc.Close()
	c.srv.mu.Lock()
	delete(c.srv.conns, c)
	c.srv.mu.Unlock()
}

// dispatch handles one incoming line.
func (c *serverConn) dispatch(ctx context.Context, line []byte, handlers *sync.WaitGroup) {
	line = bytes.TrimSpace(line)
	switch {
	case len(line) == 0:
		return
	case !json.Valid(line):
		c.writeError(nil, Errorf(CodeParse, "parse error: invalid JSON"))
		return
	case line[0] == '[':
		c.writeError(nil, Errorf(CodeInvalidRequest, "batch requests are not supported"))
		return
	}
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		c.writeError(nil, Errorf(CodeInvalidRequest, "invalid request: %v", err))
		return
	}
	if m.ID == nil { // notification
		if m.Method == methodCancel {
			var p cancelParams
			if json.Unmarshal(m.Params, &p) == nil && p.ID != nil {
				c.cancelCall(p.ID)
			}
		}
		return
	}
	if m.Result != nil || m.Error != nil {
		return // a response: the server makes no calls, so ignore it
	}
	switch m.ID[0] {
	case '"', 'n', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
	default:
		c.writeError(nil, Errorf(CodeInvalidRequest, "invalid request: id must be a string or a number"))
		return
	}
	if m.JSONRPC != "2.0" || m.Method == "" {
		c.writeError(m.ID, Errorf(CodeInvalidRequest, `invalid request: need "jsonrpc":"2.0" and a method`))
		return
	}
	c.srv.mu.Lock()
	h, closing := c.srv.handlers[m.Method], c.srv.closing
	if h != nil && !closing {
		c.srv.calls.Add(1) // under mu, so never after Shutdown's Wait began
	}
	c.srv.mu.Unlock()
	switch {
	case h == nil:
		c.writeError(m.ID, Errorf(CodeMethodNotFound, "method not found: %s", m.Method))
		return
	case closing:
		c.writeError(m.ID, Errorf(CodeUnavailable, "daemon is shutting down"))
		return
	}

	// Register before the next line is read, so an rpc.cancel that follows
	// the request always finds it.
	key := string(m.ID)
	callCtx, cancel := context.WithCancelCause(ctx)
	c.mu.Lock()
	_, dup := c.calls[key]
	if !dup {
		c.calls[key] = cancel
	}
	c.mu.Unlock()
	if dup {
		cancel(nil)
		c.srv.calls.Done()
		c.writeError(m.ID, Errorf(CodeInvalidRequest, "request id %s is already in flight", key))
		return
	}
	handlers.Add(1)
	go func() {
		defer handlers.Done()
		defer c.srv.calls.Done()
		c.run(callCtx, m.ID, m.Method, m.Params, h)
		c.mu.Lock()
		delete(c.calls, key)
		c.mu.Unlock()
		cancel(nil)
	}()
}

func (c *serverConn) cancelCall(id json.RawMessage) {
	c.mu.Lock()
	cancel := c.calls[string(id)]
	c.mu.Unlock()
	if cancel != nil {
		cancel(errCanceledByClient)
	}
}

// run calls h, recovering panics, and writes the response.
func (c *serverConn) run(ctx context.Context, id json.RawMessage, method string, params json.RawMessage, h HandlerFunc) {
	log := c.srv.log.With("method", method, "id", string(id))
	stream := &Stream{conn: c, id: id}
	start := time.Now()
	result, err := func() (result any, err error) {
		defer func() {
			if v := recover(); v != nil {
				log.Error("rpc handler panicked", "panic", v, "stack", string(debug.Stack()))
				err = Errorf(CodeInternal, "internal error: handler for %s panicked", method)
			}
		}()
		return h(ctx, params, stream)
	}()

	resp := &message{ID: id}
	if err == nil {
		if resp.Result, err = json.Marshal(result); err != nil {
			err = Errorf(CodeInternal, "encoding result of %s: %v", method, err)
		}
	}
	if err != nil {
		resp = &message{ID: id, Error: toError(err)}
	}

	stream.mu.Lock()
	stream.done = true // events must precede the response
	stream.mu.Unlock()

	werr := c.write(resp)
	if errors.Is(werr, errTooLarge) {
		e := Errorf(CodeInternal, "response of %s too large: %v", method, werr)
		err, werr = e, c.writeError(id, e)
	}

	level, attrs := slog.LevelDebug, []any{"duration", time.Since(start)}
	if err != nil {
		attrs = append(attrs, "code", CodeOf(err), "err", err)
		if CodeOf(err) == CodeInternal {
			level = slog.LevelError
		}
	}
	if cause := context.Cause(ctx); cause != nil {
		attrs = append(attrs, "canceled", cause)
	}
	if werr != nil {
		attrs = append(attrs, "write_err", werr)
	}
	log.Log(context.Background(), level, "rpc call", attrs...)
}

func (c *serverConn) writeError(id json.RawMessage, e *Error) error {
	if id == nil {
		id = json.RawMessage("null")
	}
	return c.write(&message{ID: id, Error: e})
}

// write sends one message. After a write error the connection is closed
// (the peer is gone or the stream is corrupt) and later writes fail.
func (c *serverConn) write(m *message) error {
	b, err := encode(m)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	if _, err := c.nc.Write(b); err != nil {
		c.werr = fmt.Errorf("rpc: connection to client lost: %w", err)
		c.nc.Close()
		return c.werr
	}
	return nil
}

// Stream sends events to the client of one call. It is valid only until its
// handler returns.
type Stream struct {
	conn *serverConn
	id   json.RawMessage

	mu   sync.Mutex // orders events; guards done
	done bool
}

// Send sends an rpc.event notification for the current call. It is safe for
// concurrent use. It fails if the call has returned, the client has gone
// away, or data cannot be marshalled.
func (s *Stream) Send(event string, data any) error {
	raw, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("rpc: encoding event %q: %w", event, err)
	}
	params, err := json.Marshal(eventParams{ID: s.id, Event: event, Data: raw})
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return errors.New("rpc: stream used after its call returned")
	}
	return s.conn.write(&message{Method: methodEvent, Params: params})
}
