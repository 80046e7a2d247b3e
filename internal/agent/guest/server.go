// Package guest is the agent's side of the protocol in package agent: it
// waits for the host's handshake on a byte stream (a virtio-serial port or
// vsock connections), serves yamux streams, and runs the operations (health,
// exec, put, get, ports). cmd/banger-agent is its binary.
package guest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"banger/internal/agent"

	"github.com/hashicorp/yamux"
)

// Server serves the agent protocol.
type Server struct {
	// Version is the agent's version, reported by Health.
	Version string
	// Logf logs; nil means the standard logger.
	Logf func(format string, args ...any)
	// OnReady, if set, is called once, when the server first waits for a
	// host (the port is open or the vsock listener is up).
	OnReady func()

	readyOnce sync.Once
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
		return
	}
	log.Printf(format, args...)
}

func (s *Server) ready() {
	s.readyOnce.Do(func() {
		if s.OnReady != nil {
			s.OnReady()
		}
	})
}

// Opener opens the byte stream to the host again (the virtio-serial port).
type Opener func(ctx context.Context) (io.ReadWriteCloser, error)

// Backoff bounds for reopening the stream.
const (
	minBackoff = 10 * time.Millisecond
	maxBackoff = 250 * time.Millisecond
)

// ServePort serves the virtio-serial port at path until ctx ends. While no
// host is connected the port reads EOF; the server then reopens it with
// backoff, which is also how it waits for the device to appear. A terminal
// (a serial or console port used instead) is put in raw mode. A path under
// /dev/virtio-ports/ that does not exist (no udev in the guest) is found by
// its name in /sys/class/virtio-ports.
func (s *Server) ServePort(ctx context.Context, path string) error {
	return s.ServeOpener(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
		p, err := ResolvePort(path)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOCTTY, 0)
		if err != nil {
			return nil, err
		}
		if err := makeRawIfTTY(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: raw mode: %w", p, err)
		}
		return f, nil
	})
}

// ServeOpener serves the stream that open returns, reopening it with backoff
// whenever it fails or ends, until ctx ends.
func (s *Server) ServeOpener(ctx context.Context, open Opener) error {
	backoff := minBackoff
	var lastErr string
	for ctx.Err() == nil {
		conn, err := open(ctx)
		if err != nil {
			if msg := err.Error(); msg != lastErr {
				s.logf("waiting for the host channel: %v", err)
				lastErr = msg
			}
		} else {
			if lastErr != "" {
				s.logf("host channel open")
				lastErr = ""
			}
			s.ready()
			served, err := s.serveConn(ctx, conn)
			conn.Close()
			if served {
				backoff = minBackoff
				s.logf("host disconnected (%v); waiting for a new handshake", err)
			}
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		backoff = min(backoff*2, maxBackoff)
	}
	return ctx.Err()
}

// ServeListener serves every connection l accepts (vsock under Firecracker)
// until ctx ends, and closes l.
func (s *Server) ServeListener(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	s.ready()
	var wg sync.WaitGroup
	defer wg.Wait()
	backoff := minBackoff
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Transient (out of file descriptors, …): keep serving.
			s.logf("accept: %v", err)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		backoff = minBackoff
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			_, err := s.serveConn(ctx, conn)
			s.logf("connection from %v ended: %v", conn.RemoteAddr(), err)
		}()
	}
}

// ServeConn runs handshakes and sessions on one stream until the stream
// fails or ends (the error says why) or ctx ends. After a session ended by a
// protocol error it waits for a new handshake on the same stream. It does not
// close conn, except to stop when ctx ends.
func (s *Server) ServeConn(ctx context.Context, conn io.ReadWriteCloser) error {
	_, err := s.serveConn(ctx, conn)
	return err
}

func (s *Server) serveConn(ctx context.Context, conn io.ReadWriteCloser) (served bool, err error) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	br := bufio.NewReader(conn)
	for {
		nonce, err := s.awaitStart(br, conn)
		if err != nil {
			if ctx.Err() != nil {
				return served, ctx.Err()
			}
			return served, err
		}
		served = true
		s.logf("host connected (handshake %s…)", nonce[:min(8, len(nonce))])
		if err := s.serveSession(ctx, br, conn); err != nil {
			if ctx.Err() != nil {
				return served, ctx.Err()
			}
			return served, err
		}
		s.logf("session ended by a protocol error; waiting for a new handshake")
	}
}

// awaitStart scans for SYNC lines, answers each, and returns on a START
// carrying the last SYNC's nonce, after answering STARTED.
func (s *Server) awaitStart(br *bufio.Reader, w io.Writer) (string, error) {
	var nonce string
	for {
		line, long, err := agent.ReadLine(br)
		if err != nil {
			return "", err
		}
		if long {
			continue
		}
		m := agent.FindMarker(line)
		switch {
		case strings.HasPrefix(m, agent.SyncPrefix):
			n := strings.TrimSpace(strings.TrimPrefix(m, agent.SyncPrefix))
			if !validNonce(n) {
				continue
			}
			nonce = n
			if _, err := io.WriteString(w, agent.OKPrefix+nonce+" "+agent.ProtocolVersion+"\n"); err != nil {
				return "", err
			}
		case strings.HasPrefix(m, agent.StartPrefix) && nonce != "":
			if strings.TrimSpace(strings.TrimPrefix(m, agent.StartPrefix)) != nonce {
				continue
			}
			if _, err := io.WriteString(w, agent.StartedPrefix+nonce+"\n"); err != nil {
				return "", err
			}
			return nonce, nil
		}
	}
}

func validNonce(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, c := range n {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// sessionConn is the stream as one yamux session sees it. When the session
// ends without an I/O error (a protocol error: stale bytes read as a frame),
// it is retired: later reads and writes by yamux's goroutines fail, so the
// stream can be scanned for a new handshake.
type sessionConn struct {
	br *bufio.Reader
	w  io.Writer

	rmu, wmu sync.Mutex // held during a read / a write
	mu       sync.Mutex // guards retired, ioErr
	retired  bool
	ioErr    error
}

var errRetired = errors.New("session retired")

func (c *sessionConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.isRetired() {
		return 0, errRetired
	}
	n, err := c.br.Read(p)
	if err != nil {
		c.setErr(err)
	}
	return n, err
}

func (c *sessionConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isRetired() {
		return 0, errRetired
	}
	n, err := c.w.Write(p)
	if err != nil {
		c.setErr(err)
	}
	return n, err
}

// Close does not close the stream: the server owns it.
func (c *sessionConn) Close() error { return nil }

func (c *sessionConn) isRetired() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retired
}

func (c *sessionConn) setErr(err error) {
	c.mu.Lock()
	if c.ioErr == nil {
		c.ioErr = err
	}
	c.mu.Unlock()
}

// retire stops the session's use of the stream. It returns the stream's I/O
// error if there was one, or an error if a read or write is still in flight
// (the stream cannot be reused safely then).
func (c *sessionConn) retire() error {
	c.mu.Lock()
	err := c.ioErr
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if !c.rmu.TryLock() {
		return errors.New("session ended with a read in flight")
	}
	defer c.rmu.Unlock()
	if !c.wmu.TryLock() {
		return errors.New("session ended with a write in flight")
	}
	defer c.wmu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.retired = true
	return c.ioErr
}

// serveSession runs one yamux session. It returns nil when the session ended
// by a protocol error and the stream can be scanned again.
func (s *Server) serveSession(ctx context.Context, br *bufio.Reader, w io.Writer) error {
	sc := &sessionConn{br: br, w: w}
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false // the guest only answers the host's pings
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.LogOutput = nil
	cfg.Logger = log.New(logWriter{s}, "", 0)
	sess, err := yamux.Server(sc, cfg)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(ctx, st)
		}()
	}
	sess.Close()
	wg.Wait()
	if err := sc.retire(); err != nil {
		return fmt.Errorf("session ended: %w", err)
	}
	return nil
}

type logWriter struct{ s *Server }

func (l logWriter) Write(p []byte) (int, error) {
	l.s.logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// handle serves one request stream.
func (s *Server) handle(ctx context.Context, st *yamux.Stream) {
	defer st.Close()
	br := bufio.NewReader(st)
	var req agent.Request
	if err := agent.ReadJSONLine(br, &req); err != nil {
		return
	}
	switch req.Op {
	case agent.OpHealth:
		h, err := s.Health()
		if err != nil {
			agent.WriteJSONLine(st, agent.Response{Error: err.Error()})
			return
		}
		agent.WriteJSONLine(st, agent.Response{Health: &h})
	case agent.OpPorts:
		ports, err := ListeningPorts("/proc")
		if err != nil {
			agent.WriteJSONLine(st, agent.Response{Error: err.Error()})
			return
		}
		agent.WriteJSONLine(st, agent.Response{Ports: ports})
	case agent.OpExec:
		s.exec(ctx, req.Exec, br, st)
	case agent.OpPut:
		s.put(req.Dest, br, st)
	case agent.OpGet:
		s.get(req.Paths, st)
	default:
		agent.WriteJSONLine(st, agent.Response{Error: fmt.Sprintf("unknown operation %q (agent protocol %s)", req.Op, agent.ProtocolVersion)})
	}
}
