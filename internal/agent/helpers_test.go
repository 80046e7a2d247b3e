package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/agent"
	"banger/internal/agent/guest"
)

// testTimeout bounds every wait on a real condition in these tests.
const testTimeout = 20 * time.Second

// guestHarness runs a guest server whose "device" is a Unix socket the host
// dials, like QEMU's virtio-serial chardev: each host connection is what the
// guest gets when it reopens the port.
type guestHarness struct {
	sock  string
	srv   *guest.Server
	opens chan struct{} // one value per stream the guest opened
	ready chan struct{} // closed by the server's OnReady
}

// safeLog forwards to t.Logf until the test's cleanup.
type safeLog struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (l *safeLog) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.t.Logf("guest: "+format, args...)
	}
}

func (l *safeLog) stop() {
	l.mu.Lock()
	l.done = true
	l.mu.Unlock()
}

func shortTempDir(t testing.TB) string {
	// Unix socket paths are limited to 108 bytes: t.TempDir() can be longer.
	dir, err := os.MkdirTemp("", "agt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startGuest serves the agent on a fresh socket; failOpens makes the first
// opens fail, as a port that does not exist yet would.
func startGuest(t testing.TB, failOpens int) *guestHarness {
	t.Helper()
	sock := shortTempDir(t) + "/agent.sock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	lg := &safeLog{t: t}
	h := &guestHarness{sock: sock, opens: make(chan struct{}, 100)}
	ready := make(chan struct{})
	h.srv = &guest.Server{Version: "test", Logf: lg.logf, OnReady: func() { close(ready) }}
	ctx, cancel := context.WithCancel(context.Background())
	stopL := context.AfterFunc(ctx, func() { l.Close() })
	var mu sync.Mutex
	open := func(ctx context.Context) (io.ReadWriteCloser, error) {
		mu.Lock()
		if failOpens > 0 {
			failOpens--
			mu.Unlock()
			return nil, errors.New("no such device (simulated)")
		}
		mu.Unlock()
		c, err := l.Accept()
		if err == nil {
			select {
			case h.opens <- struct{}{}:
			default:
			}
		}
		return c, err
	}
	done := make(chan error, 1)
	go func() { done <- h.srv.ServeOpener(ctx, open) }()
	t.Cleanup(func() {
		cancel()
		stopL()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Errorf("guest server did not stop within %v", testTimeout)
		}
		lg.stop()
	})
	h.ready = ready
	return h
}

func (h *guestHarness) dial(t testing.TB) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := agent.Dial(ctx, agent.UnixDialer(h.sock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// watchBuf is an io.Writer whose content can be waited for.
type watchBuf struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	notify chan struct{}
}

func newWatchBuf() *watchBuf { return &watchBuf{notify: make(chan struct{}, 1)} }

func (w *watchBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	select {
	case w.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *watchBuf) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor waits until the content contains s, and returns the content.
func (w *watchBuf) waitFor(t testing.TB, s string) string {
	t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for {
		if out := w.String(); strings.Contains(out, s) {
			return out
		}
		select {
		case <-w.notify:
		case <-deadline.C:
			t.Fatalf("output never contained %q; got %q", s, w.String())
		}
	}
}

// processGone reports whether pid no longer runs (gone, or a zombie waiting
// for a reaper).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// waitGone polls (bounded) until pid is gone.
func waitGone(t testing.TB, pid int) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still running after %v", pid, testTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// killOnCleanup makes sure a guest process started by a test does not
// outlive it, whatever happens.
func killOnCleanup(t testing.TB, pids ...int) {
	t.Cleanup(func() {
		for _, pid := range pids {
			if pid > 0 && !processGone(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}

func parsePids(t testing.TB, s string) []int {
	t.Helper()
	var pids []int
	for _, f := range strings.Fields(s) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("bad pid %q in %q", f, s)
		}
		pids = append(pids, pid)
	}
	return pids
}

// waitExec polls (bounded) until pid runs the program comm.
func waitExec(t testing.TB, pid int, comm string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(b)) == comm {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never ran %s (comm %q)", pid, comm, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var (
	netListen       = net.Listen
	netListenPacket = net.ListenPacket
)

func portOf(a net.Addr) int {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.Port
	case *net.UDPAddr:
		return a.Port
	}
	return 0
}
