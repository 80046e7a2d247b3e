package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
)

// Dialer opens the byte stream to a guest's agent (see UnixDialer and
// FirecrackerDialer).
type Dialer func(ctx context.Context) (net.Conn, error)

// Client is a connection to one guest's agent. Its methods may be called
// concurrently; each is one yamux stream.
type Client struct {
	sess *yamux.Session
}

// ErrClosed is returned by requests on a client whose connection ended.
var ErrClosed = errors.New("agent connection closed")

// Dial connects with dial and completes the handshake. It blocks until the
// agent answers or ctx ends, so a daemon can call it with a boot deadline;
// see also DialWait. A *VersionError means the guest's agent speaks another
// major protocol version.
func Dial(ctx context.Context, dial Dialer) (*Client, error) {
	conn, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	return NewClient(ctx, conn)
}

// DialWait is Dial retried with backoff until it succeeds, ctx ends, or the
// agent's version is refused: the host socket may not exist yet while the VMM
// starts, and the agent may not run yet while the guest boots. The error on
// ctx's end includes the last attempt's.
func DialWait(ctx context.Context, dial Dialer) (*Client, error) {
	delay := 20 * time.Millisecond
	for {
		c, err := Dial(ctx, dial)
		if err == nil {
			return c, nil
		}
		var ve *VersionError
		if errors.As(err, &ve) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("guest agent not reachable: %w (last error: %v)", ctx.Err(), err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("guest agent not reachable: %w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
		delay = min(delay*2, 500*time.Millisecond)
	}
}

// NewClient runs the handshake on conn and starts the session. It takes
// ownership of conn: it is closed on error and by Close. Closing conn must
// interrupt a pending Read (true of a net.Conn; of an *os.File only in
// nonblocking mode), or Close and a cancelled handshake hang.
func NewClient(ctx context.Context, conn io.ReadWriteCloser) (*Client, error) {
	br, err := handshake(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.KeepAliveInterval = 15 * time.Second
	cfg.ConnectionWriteTimeout = 30 * time.Second // TCG guests can be slow
	cfg.StreamCloseTimeout = time.Minute
	sess, err := yamux.Client(&BufferedConn{R: br, WriteCloser: conn}, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &Client{sess: sess}, nil
}

func handshake(ctx context.Context, conn io.ReadWriteCloser) (*bufio.Reader, error) {
	var nb [16]byte
	if _, err := rand.Read(nb[:]); err != nil {
		return nil, err
	}
	nonce := hex.EncodeToString(nb[:])

	// Closing conn is the only portable way to unblock its reads.
	var ctxClosed bool
	var mu sync.Mutex // guards ctxClosed and writes to conn
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		ctxClosed = true
		mu.Unlock()
		conn.Close()
	})
	fail := func(err error) (*bufio.Reader, error) {
		stop()
		mu.Lock()
		closed := ctxClosed
		mu.Unlock()
		if closed {
			return nil, fmt.Errorf("no answer from the guest agent: %w", ctx.Err())
		}
		return nil, err
	}

	// Repeat SYNC until an OK arrives: the guest may not be reading yet, or
	// may eat one SYNC as part of a stale yamux session.
	syncing := true
	syncDone := make(chan struct{})
	syncStop := make(chan struct{})
	go func() {
		defer close(syncDone)
		t := time.NewTicker(SyncInterval)
		defer t.Stop()
		for {
			mu.Lock()
			if !syncing {
				mu.Unlock()
				return
			}
			_, err := io.WriteString(conn, "\n"+SyncPrefix+nonce+"\n")
			mu.Unlock()
			if err != nil {
				return
			}
			select {
			case <-t.C:
			case <-syncStop:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		mu.Lock()
		syncing = false
		mu.Unlock()
		close(syncStop)
		<-syncDone
	}()

	br := bufio.NewReader(conn)
	started := false
	for {
		line, _, err := ReadLine(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("agent connection closed during the handshake")
			}
			return fail(fmt.Errorf("agent handshake: %w", err))
		}
		m := FindMarker(line)
		switch {
		case !started && strings.HasPrefix(m, OKPrefix):
			f := strings.Fields(strings.TrimPrefix(m, OKPrefix))
			if len(f) < 2 || f[0] != nonce {
				continue // an answer to an earlier connection's SYNC
			}
			major, _, err := ParseVersion(f[1])
			if err != nil {
				return fail(fmt.Errorf("agent handshake: %w", err))
			}
			if major != ProtocolMajor {
				return fail(&VersionError{Agent: f[1], Host: ProtocolVersion})
			}
			mu.Lock()
			syncing = false
			_, err = io.WriteString(conn, StartPrefix+nonce+"\n")
			mu.Unlock()
			if err != nil {
				return fail(fmt.Errorf("agent handshake: %w", err))
			}
			started = true
		case started && m == StartedPrefix+nonce:
			if !stop() {
				return fail(ctx.Err())
			}
			return br, nil
		}
	}
}

// Close ends the session; running Exec calls fail and the agent kills their
// processes.
func (c *Client) Close() error { return c.sess.Close() }

// Done is closed when the connection ends (Close, guest gone, keepalive
// failure); the daemon then dials again.
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// stream is one request.
type stream struct {
	s  *yamux.Stream
	br *bufio.Reader
	fw *FrameWriter
}

func (c *Client) open(req Request) (*stream, error) {
	s, err := c.sess.OpenStream()
	if err != nil {
		if errors.Is(err, yamux.ErrSessionShutdown) {
			return nil, ErrClosed
		}
		return nil, err
	}
	if err := WriteJSONLine(s, req); err != nil {
		s.Close()
		return nil, c.wrap(err)
	}
	return &stream{s: s, br: bufio.NewReader(s), fw: &FrameWriter{W: s}}, nil
}

// wrap turns a session shutdown into ErrClosed.
func (c *Client) wrap(err error) error {
	if err == nil {
		return nil
	}
	if c.sess.IsClosed() || errors.Is(err, yamux.ErrSessionShutdown) {
		return fmt.Errorf("%w: %v", ErrClosed, err)
	}
	return err
}

// watch aborts the stream's pending reads and writes when ctx ends; the
// returned function stops watching and reports whether ctx fired.
func watch(ctx context.Context, s *yamux.Stream) func() bool {
	stop := context.AfterFunc(ctx, func() { s.SetDeadline(time.Now()) })
	return func() bool { return !stop() && ctx.Err() != nil }
}

// simple runs a request whose answer is one response line.
func (c *Client) simple(ctx context.Context, req Request) (*Response, error) {
	st, err := c.open(req)
	if err != nil {
		return nil, err
	}
	defer st.s.Close()
	stop := watch(ctx, st.s)
	var resp Response
	err = ReadJSONLine(st.br, &resp)
	if stop() {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, c.wrap(fmt.Errorf("agent %s: %w", req.Op, err))
	}
	if resp.Error != "" {
		return nil, fmt.Errorf("agent %s: %s", req.Op, resp.Error)
	}
	return &resp, nil
}

// Health asks the agent for its version and the guest's boot id, uptime and
// hostname. A successful Health means the guest is ready for requests.
func (c *Client) Health(ctx context.Context) (Health, error) {
	resp, err := c.simple(ctx, Request{Op: OpHealth})
	if err != nil {
		return Health{}, err
	}
	if resp.Health == nil {
		return Health{}, errors.New("agent health: empty answer")
	}
	return *resp.Health, nil
}

// ListeningPorts lists the guest's listening TCP sockets and bound UDP
// sockets.
func (c *Client) ListeningPorts(ctx context.Context) ([]ListeningPort, error) {
	resp, err := c.simple(ctx, Request{Op: OpPorts})
	if err != nil {
		return nil, err
	}
	return resp.Ports, nil
}

// PutTar extracts the tar stream r under the guest directory dest (absolute;
// created if missing). Entries that would land outside dest are refused: the
// error names the entry. Entries before a refused one stay extracted.
func (c *Client) PutTar(ctx context.Context, dest string, r io.Reader) error {
	st, err := c.open(Request{Op: OpPut, Dest: dest})
	if err != nil {
		return err
	}
	defer st.s.Close()
	stop := watch(ctx, st.s)

	// Send while waiting for the answer: the guest answers early when it
	// refuses an entry, and then stops reading.
	sendErr := make(chan error, 1)
	var readErr error
	go func() {
		buf := make([]byte, DataChunk)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if werr := st.fw.Frame(FrameData, buf[:n]); werr != nil {
					sendErr <- werr
					return
				}
			}
			if err == io.EOF {
				sendErr <- st.fw.Frame(FrameEnd, nil)
				return
			}
			if err != nil {
				readErr = err
				sendErr <- st.fw.Frame(FrameAbort, []byte(err.Error()))
				return
			}
		}
	}()
	var resp Response
	rerr := ReadJSONLine(st.br, &resp)
	if rerr != nil || resp.Error != "" {
		st.s.SetWriteDeadline(time.Now()) // unblock the sender
	}
	serr := <-sendErr
	if stop() {
		return ctx.Err()
	}
	switch {
	case readErr != nil:
		return fmt.Errorf("agent put: reading the archive: %w", readErr)
	case rerr != nil:
		if serr != nil {
			return c.wrap(fmt.Errorf("agent put: %w", serr))
		}
		return c.wrap(fmt.Errorf("agent put: %w", rerr))
	case resp.Error != "":
		return fmt.Errorf("agent put %s: %s", dest, resp.Error)
	}
	return nil
}

// GetTar writes a tar of the guest paths (absolute; each archived under its
// base name) to w.
func (c *Client) GetTar(ctx context.Context, paths []string, w io.Writer) error {
	st, err := c.open(Request{Op: OpGet, Paths: paths})
	if err != nil {
		return err
	}
	defer st.s.Close()
	stop := watch(ctx, st.s)
	err = func() error {
		var resp Response
		if err := ReadJSONLine(st.br, &resp); err != nil {
			return c.wrap(fmt.Errorf("agent get: %w", err))
		}
		if resp.Error != "" {
			return fmt.Errorf("agent get: %s", resp.Error)
		}
		for {
			typ, payload, err := ReadFrame(st.br)
			if err != nil {
				return c.wrap(fmt.Errorf("agent get: %w", err))
			}
			switch typ {
			case FrameData:
				if _, err := w.Write(payload); err != nil {
					return fmt.Errorf("agent get: writing the archive: %w", err)
				}
			case FrameExit:
				var end EndStatus
				if err := json.Unmarshal(payload, &end); err != nil {
					return fmt.Errorf("agent get: %w", err)
				}
				if end.Error != "" {
					return fmt.Errorf("agent get: %s", end.Error)
				}
				return nil
			default:
				return fmt.Errorf("agent get: unexpected frame %q", typ)
			}
		}
	}()
	if stop() {
		return ctx.Err()
	}
	return err
}

// Exec runs a command in the guest and waits for it: stdin (may be nil) is
// streamed to it, its output to stdout and stderr (with req.TTY everything
// goes to stdout; stderr may then be nil), sizes received from resize (may be
// nil) resize its terminal. Ending ctx sends SIGKILL to the command's process
// group and returns ctx's error once the agent reports the command gone (or
// after a short grace). A non-zero exit is not an error: see ExitStatus.
// Like exec.Cmd, Exec does not wait for a blocked stdin.Read to return.
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdin io.Reader, stdout, stderr io.Writer, resize <-chan WinSize) (ExitStatus, error) {
	p, err := c.Start(ctx, req, stdin, stdout, stderr)
	if err != nil {
		return ExitStatus{}, err
	}
	if resize != nil {
		go func() {
			for {
				select {
				case ws, ok := <-resize:
					if !ok {
						return
					}
					if p.Resize(ws) != nil {
						return
					}
				case <-p.done:
					return
				}
			}
		}()
	}
	return p.Wait()
}

// Process is a command started with Start.
type Process struct {
	// PID is the command's pid in the guest (also its process group).
	PID int

	st     *stream
	c      *Client
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	done   chan struct{}
	status ExitStatus
	err    error
	// killed is set when ctx ended before the command did.
	killed atomic.Bool

	// Stdin flow control: credit is how many more stdin bytes the agent
	// accepts (-1: unlimited); ended is set when readLoop returns.
	creditMu sync.Mutex
	creditCd *sync.Cond
	credit   int64
	ended    bool
}

// KillGrace is how long a cancelled Exec waits for the agent to report the
// command gone.
const KillGrace = 5 * time.Second

// Start starts a command (see Exec); the caller must call Wait. Ending ctx
// kills the command.
func (c *Client) Start(ctx context.Context, req ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (*Process, error) {
	if len(req.Argv) == 0 {
		return nil, errors.New("agent exec: empty argv")
	}
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	st, err := c.open(Request{Op: OpExec, Exec: &req})
	if err != nil {
		return nil, err
	}
	stop := watch(ctx, st.s)
	var resp Response
	err = ReadJSONLine(st.br, &resp)
	if stop() {
		st.s.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		st.s.Close()
		return nil, c.wrap(fmt.Errorf("agent exec: %w", err))
	}
	if resp.Error != "" {
		st.s.Close()
		return nil, fmt.Errorf("agent exec %s: %s", req.Argv[0], resp.Error)
	}
	p := &Process{PID: resp.PID, st: st, c: c, ctx: ctx, stdout: stdout, stderr: stderr, done: make(chan struct{})}
	p.creditCd = sync.NewCond(&p.creditMu)
	p.credit = int64(resp.StdinWindow)
	if p.credit <= 0 {
		p.credit = -1
	}
	if stdin == nil {
		st.fw.Frame(FrameCloseStdin, nil)
	} else {
		go p.pumpStdin(stdin)
	}
	go p.readLoop()
	go func() {
		select {
		case <-p.done:
		case <-ctx.Done():
			p.killed.Store(true)
			// Kill, then give the agent a moment to report the exit.
			st.s.SetWriteDeadline(time.Now().Add(KillGrace))
			st.fw.Frame(FrameSignal, []byte("SIGKILL"))
			t := time.NewTimer(KillGrace)
			defer t.Stop()
			select {
			case <-p.done:
			case <-t.C:
				st.s.SetDeadline(time.Now())
			}
		}
	}()
	return p, nil
}

func (p *Process) pumpStdin(r io.Reader) {
	buf := make([]byte, DataChunk)
	for {
		n, err := r.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			k := p.takeCredit(len(data))
			if k == 0 {
				return // the command ended
			}
			if p.st.fw.Frame(FrameStdin, data[:k]) != nil {
				return
			}
			data = data[k:]
		}
		if err != nil {
			p.st.fw.Frame(FrameCloseStdin, nil)
			return
		}
	}
}

// takeCredit waits until the agent accepts stdin and returns how many of n
// bytes may be sent now, or 0 once the command ended.
func (p *Process) takeCredit(n int) int {
	p.creditMu.Lock()
	defer p.creditMu.Unlock()
	for p.credit == 0 && !p.ended {
		p.creditCd.Wait()
	}
	if p.ended {
		return 0
	}
	if p.credit < 0 {
		return n
	}
	k := int(min(int64(n), p.credit))
	p.credit -= int64(k)
	return k
}

func (p *Process) addCredit(payload []byte) {
	if len(payload) != 4 {
		return
	}
	p.creditMu.Lock()
	if p.credit >= 0 {
		p.credit += int64(binary.BigEndian.Uint32(payload))
	}
	p.creditCd.Broadcast()
	p.creditMu.Unlock()
}

func (p *Process) readLoop() {
	defer close(p.done)
	defer p.st.s.Close()
	defer func() {
		p.creditMu.Lock()
		p.ended = true
		p.creditCd.Broadcast()
		p.creditMu.Unlock()
	}()
	var werr error
	for {
		typ, payload, err := ReadFrame(p.st.br)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			p.err = p.c.wrap(fmt.Errorf("agent exec: connection lost before the command finished: %w", err))
			return
		}
		switch typ {
		case FrameStdout, FrameStderr:
			if werr != nil {
				continue
			}
			w := p.stdout
			if typ == FrameStderr {
				w = p.stderr
			}
			if _, werr = w.Write(payload); werr != nil {
				// Nobody reads the output any more: stop the command.
				p.st.fw.Frame(FrameSignal, []byte("SIGKILL"))
			}
		case FrameCredit:
			p.addCredit(payload)
		case FrameExit:
			if err := json.Unmarshal(payload, &p.status); err != nil {
				p.err = fmt.Errorf("agent exec: bad exit frame: %w", err)
			} else if werr != nil {
				p.err = fmt.Errorf("agent exec: writing output: %w", werr)
			}
			return
		default:
			p.err = fmt.Errorf("agent exec: unexpected frame %q", typ)
			return
		}
	}
}

// Wait waits for the command to end. It returns ctx's error if Start's ctx
// ended first (the command was killed).
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	if p.killed.Load() {
		return p.status, p.ctx.Err()
	}
	return p.status, p.err
}

// Done is closed when the command has ended (or the connection was lost).
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the command's process group. The agent accepts
// SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGUSR1, SIGUSR2, SIGPIPE, SIGTERM,
// SIGCONT, SIGSTOP, SIGTSTP and SIGWINCH.
func (p *Process) Signal(sig syscall.Signal) error {
	name := unix.SignalName(sig)
	if name == "" {
		return fmt.Errorf("unknown signal %d", int(sig))
	}
	return p.c.wrap(p.st.fw.Frame(FrameSignal, []byte(name)))
}

// Resize sets the command's terminal size (TTY only; ignored otherwise).
func (p *Process) Resize(ws WinSize) error {
	return p.c.wrap(p.st.fw.Frame(FrameResize, EncodeWinSize(ws)))
}
