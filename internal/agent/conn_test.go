package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/agent"
	"banger/internal/agent/guest"
)

func TestHealth(t *testing.T) {
	h := startGuest(t, 3) // the port "appears" after three failed opens
	c := h.dial(t)
	hl, err := c.Health(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	host, _ := os.Hostname()
	if hl.AgentVersion != "test" || hl.ProtocolVersion != agent.ProtocolVersion ||
		hl.BootID != strings.TrimSpace(string(bootID)) || hl.Hostname != host || hl.UptimeSeconds <= 0 {
		t.Fatalf("health = %+v", hl)
	}
	select {
	case <-h.ready:
	default:
		t.Fatal("the server answered without having called OnReady")
	}
}

// staleDialer connects, then writes junk as if an earlier connection had
// left bytes in the guest's port, before the handshake starts.
func staleDialer(sock string, junk []byte) agent.Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		conn, err := agent.UnixDialer(sock)(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := conn.Write(junk); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
}

func TestStaleBytesBeforeSync(t *testing.T) {
	random := make([]byte, 8192)
	rand.Read(random)
	cases := map[string][]byte{
		"binary junk without newline": append([]byte("half a line"), random...),
		// A whole stale handshake: the guest switches to yamux on it, reads
		// the junk that follows as a frame, fails, and must resync on the
		// same stream when the host repeats its SYNC.
		"stale handshake then junk": append([]byte("\nBANGER-AGENT-SYNC deadbeef\nBANGER-AGENT-START deadbeef\n\xffnot yamux\n"), random...),
		"a yamux-looking frame":     {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 'x'},
		"long line":                 bytes.Repeat([]byte("BANGER-AGENT-"), 200),
	}
	for name, junk := range cases {
		t.Run(name, func(t *testing.T) {
			h := startGuest(t, 0)
			ctx := testCtx(t)
			c, err := agent.Dial(ctx, staleDialer(h.sock, junk))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Health(ctx); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			st, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"echo", "still", "works"}}, nil, &out, nil, nil)
			if err != nil || st.Code != 0 || out.String() != "still works\n" {
				t.Fatalf("exec after resync: %v %v %q", st, err, out.String())
			}
		})
	}
}

func TestReconnect(t *testing.T) {
	h := startGuest(t, 0)
	ctx := testCtx(t)
	c1 := h.dial(t)
	h1, err := c1.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// A command running when the host goes away (a daemon restart) is
	// killed by the agent.
	out := newWatchBuf()
	p, err := c1.Start(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "echo $$; exec sleep 1000"}}, nil, out, nil)
	if err != nil {
		t.Fatal(err)
	}
	killOnCleanup(t, p.PID)
	out.waitFor(t, "\n")
	c1.Close()
	if _, err := p.Wait(); !errors.Is(err, agent.ErrClosed) {
		t.Fatalf("Wait after Close = %v, want ErrClosed", err)
	}
	if _, err := c1.Health(ctx); !errors.Is(err, agent.ErrClosed) {
		t.Fatalf("Health after Close = %v, want ErrClosed", err)
	}
	waitGone(t, p.PID)

	// Reconnect, sync again: requests work. This connection then vanishes
	// without a clean close (the daemon crashed).
	conn, err := agent.UnixDialer(h.sock)(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := agent.NewClient(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	h2, err := c2.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h2.BootID != h1.BootID {
		t.Fatalf("boot id changed: %s → %s", h1.BootID, h2.BootID)
	}
	var buf bytes.Buffer
	if st, err := c2.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}}, nil, &buf, nil, nil); err != nil || st.Code != 0 {
		t.Fatalf("exec after reconnect: %v %v", st, err)
	}

	conn.Close() // under the client's feet
	select {
	case <-c2.Done():
	case <-time.After(testTimeout):
		t.Fatal("client did not notice its connection dropped")
	}
	if _, err := h.dial(t).Health(ctx); err != nil {
		t.Fatal(err)
	}
}

// fakeAgent answers the host's handshake with the given protocol version.
func fakeAgent(t *testing.T, version string) net.Conn {
	host, g := socketPair(t)
	go func() {
		defer g.Close()
		br := bufio.NewReader(g)
		for {
			line, _, err := agent.ReadLine(br)
			if err != nil {
				return
			}
			m := agent.FindMarker(line)
			if n, ok := strings.CutPrefix(m, agent.SyncPrefix); ok {
				fmt.Fprintf(g, "%s%s %s\n", agent.OKPrefix, n, version)
			}
			if n, ok := strings.CutPrefix(m, agent.StartPrefix); ok {
				fmt.Fprintf(g, "%s%s\n", agent.StartedPrefix, n)
			}
		}
	}()
	return host
}

// socketPair is a connected pair of Unix stream sockets.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

func TestVersionMismatch(t *testing.T) {
	_, err := agent.NewClient(testCtx(t), fakeAgent(t, "2.3"))
	var ve *agent.VersionError
	if !errors.As(err, &ve) || ve.Agent != "2.3" {
		t.Fatalf("err = %v, want a VersionError for 2.3", err)
	}
	want := fmt.Sprintf("the image's agent is v2, banger needs v%d: re-pull or re-register the image", agent.ProtocolMajor)
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	// DialWait gives up at once on a version mismatch.
	conn := fakeAgent(t, "0.9")
	_, err = agent.DialWait(testCtx(t), func(context.Context) (net.Conn, error) { return conn, nil })
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "the image's agent is v0, banger needs v1") {
		t.Fatalf("DialWait err = %v", err)
	}

	// A newer minor version is fine.
	c, err := agent.NewClient(testCtx(t), fakeAgent(t, fmt.Sprintf("%d.%d", agent.ProtocolMajor, agent.ProtocolMinor+7)))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestHandshakeTimeout(t *testing.T) {
	// Connected, but no agent answers (QEMU's socket before the guest runs
	// its agent): Dial gives up when ctx ends.
	host, _ := socketPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := agent.NewClient(ctx, host)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer from the guest agent") {
		t.Fatalf("err = %v", err)
	}
}

func TestDialWaitForLateAgent(t *testing.T) {
	// The socket does not exist yet; DialWait retries until it does.
	dir := shortTempDir(t)
	sock := dir + "/late.sock"
	srv := &guest.Server{Version: "late", Logf: t.Logf}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	dials := 0
	var mu sync.Mutex
	dial := func(dctx context.Context) (net.Conn, error) {
		mu.Lock()
		dials++
		if dials == 3 { // the "VMM" creates its socket now
			l, err := net.Listen("unix", sock)
			if err != nil {
				mu.Unlock()
				return nil, err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				srv.ServeListener(ctx, l)
			}()
		}
		mu.Unlock()
		return agent.UnixDialer(sock)(dctx)
	}
	c, err := agent.DialWait(testCtx(t), dial)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if hl, err := c.Health(testCtx(t)); err != nil || hl.AgentVersion != "late" {
		t.Fatalf("health %+v %v", hl, err)
	}
}

// fcListener plays Firecracker's host side of vsock: a connection to its
// Unix socket says "CONNECT <port>"; for the guest's port it answers
// "OK <n>" and the connection is the guest's; otherwise it is closed.
type fcListener struct {
	net.Listener
	port uint32
}

func (l fcListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		line, _, err := agent.ReadLine(bufio.NewReaderSize(oneByteReader{c}, 16))
		if err == nil && line == fmt.Sprintf("CONNECT %d", l.port) {
			fmt.Fprintf(c, "OK 1073741824\n")
			return c, nil
		}
		c.Close()
	}
}

// oneByteReader keeps bufio from reading past the CONNECT line.
type oneByteReader struct{ c net.Conn }

func (r oneByteReader) Read(p []byte) (int, error) { return r.c.Read(p[:1]) }

func TestFirecrackerVsock(t *testing.T) {
	sock := shortTempDir(t) + "/fc.vsock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &guest.Server{Version: "fc", Logf: t.Logf}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeListener(ctx, fcListener{l, agent.DefaultVsockPort}) }()
	t.Cleanup(func() { cancel(); <-done })

	c, err := agent.Dial(testCtx(t), agent.FirecrackerDialer(sock, agent.DefaultVsockPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if hl, err := c.Health(testCtx(t)); err != nil || hl.AgentVersion != "fc" {
		t.Fatalf("health %+v %v", hl, err)
	}
	// Two connections at once are two sessions.
	c2, err := agent.Dial(testCtx(t), agent.FirecrackerDialer(sock, agent.DefaultVsockPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Health(testCtx(t)); err != nil {
		t.Fatal(err)
	}

	_, err = agent.DialFirecrackerVsock(testCtx(t), sock, 9999)
	if !errors.Is(err, agent.ErrVsockRefused) {
		t.Fatalf("dial to a port nobody listens on: %v", err)
	}
}
