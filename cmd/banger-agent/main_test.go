package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/agent"

	"github.com/creack/pty"
)

const testTimeout = 60 * time.Second

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

// agentBinary builds the static binary once per test run, as the image
// builder would.
func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "banger-agent-test")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "banger-agent")
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			gobin = "go"
		}
		cmd := exec.Command(gobin, "build", "-trimpath", "-ldflags", "-s -w -X main.version=test-1", "-o", binPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = err
			binPath = string(out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build: %v\n%s", buildErr, binPath)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func TestVersionFlag(t *testing.T) {
	out, err := exec.Command(agentBinary(t), "-version").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "banger-agent test-1 (protocol " + agent.ProtocolVersion + ")\n"
	if string(out) != want {
		t.Fatalf("-version printed %q, want %q", out, want)
	}
}

func TestStatic(t *testing.T) {
	bin := agentBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Fatalf("binary is dynamically linked (%v)", p.Type)
		}
	}
	fi, _ := os.Stat(bin)
	t.Logf("static binary: %d bytes", fi.Size())
}

// syncBuf is a goroutine-safe buffer for the agent's stderr.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServesOverTerminal runs the real binary on a pseudo-terminal standing
// in for the virtio-serial port (the agent puts a terminal in raw mode), with
// stale bytes in it, and drives it with the host client.
func TestServesOverTerminal(t *testing.T) {
	bin := agentBinary(t)
	m, slave, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	// pty.Open leaves the master in blocking mode, where Close cannot
	// interrupt a Read: use a nonblocking duplicate.
	fd, err := syscall.Dup(int(m.Fd()))
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	master := os.NewFile(uintptr(fd), "ptmx")
	defer slave.Close() // keeps the terminal up while the agent reopens it
	stale := []byte("stale junk from an earlier host\x00\xff\n")

	var stderr syncBuf
	cmd := exec.Command(bin, "-port", slave.Name(), "-kmsg", "")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-waited
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// Raw mode is set by the agent when it opens the port; junk written
	// before that may be echoed back, which the handshake also ignores.
	master.Write(stale)
	c, err := agent.NewClient(ctx, master)
	if err != nil {
		t.Fatalf("%v\nagent stderr:\n%s", err, stderr.String())
	}
	defer c.Close()

	h, err := c.Health(ctx)
	if err != nil || h.AgentVersion != "test-1" || h.ProtocolVersion != agent.ProtocolVersion {
		t.Fatalf("health %+v %v", h, err)
	}
	if !strings.Contains(stderr.String(), "banger-agent: ready") {
		t.Errorf("no ready line on stderr: %q", stderr.String())
	}

	// Binary data both ways, unchanged by the terminal.
	in := make([]byte, 1<<20)
	rand.Read(in)
	var out bytes.Buffer
	st, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"cat"}}, bytes.NewReader(in), &out, nil, nil)
	if err != nil || st.Code != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("cat round trip: %v %v, %d of %d bytes, equal=%v", st, err, out.Len(), len(in), bytes.Equal(out.Bytes(), in))
	}
	out.Reset()
	st, err = c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "exit 42"}}, nil, &out, nil, nil)
	if err != nil || st.Code != 42 {
		t.Fatalf("%v %v", st, err)
	}

	// SIGTERM stops it cleanly.
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("agent exited with %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(testTimeout):
		t.Fatalf("agent ignored SIGTERM; stderr:\n%s", stderr.String())
	}
}
