package privileged

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"banger/internal/vmm/proc"
)

// The test binary doubles as the processes the tests need, chosen by
// childEnv: "helper" (the root helper, in its own network namespace),
// "client" (one request, printed as JSON; run as another uid) and "vmm" (a
// stand-in VMM that waits for a signal; its argv names a control socket).
const childEnv = "BANGER_PRIVTEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		code := m.Run()
		if publicBinDir != "" {
			os.RemoveAll(publicBinDir)
		}
		os.Exit(code)
	case "helper":
		os.Exit(childHelper(os.Args[len(os.Args)-1]))
	case "client":
		os.Exit(childClient(os.Args[len(os.Args)-2], os.Args[len(os.Args)-1]))
	case "vmm":
		signal.Ignore(syscall.SIGHUP)
		time.Sleep(time.Hour)
		os.Exit(3)
	}
}

func childHelper(policyFile string) int {
	p, err := LoadPolicy(policyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv, err := NewHelper(p, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ln, err := srv.Listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := srv.Serve(ctx, ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// clientResult is what a "client" child prints.
type clientResult struct {
	Response Response `json:"response"`
	Err      string   `json:"err"`
}

func childClient(socket, request string) int {
	var req Request
	if err := json.Unmarshal([]byte(request), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, files, err := (&Client{Socket: socket}).Do(ctx, req)
	closeFiles(files)
	r := clientResult{Response: resp}
	if err != nil {
		r.Err = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the helper creates links in a network namespace and the tests switch uids")
	}
}

// publicBinDir holds the copy of the test binary (removed by TestMain).
var publicBinDir string

// publicTestBinary copies the test binary into a world-readable directory
// so that children running as another uid can execute it.
var publicTestBinary = sync.OnceValues(func() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "bgtest-priv-bin-")
	if err != nil {
		return "", err
	}
	publicBinDir = dir
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	b, err := os.ReadFile(self)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "privileged.test")
	return dst, os.WriteFile(dst, b, 0o755)
})

func testBinary(t *testing.T) string {
	t.Helper()
	p, err := publicTestBinary()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// helperEnv is a running root helper (a child in its own network namespace)
// with its policy, managed directory and log.
type helperEnv struct {
	policy  Policy
	managed string // the managed directory (contains vms/)
	cmd     *exec.Cmd
	log     *bytes.Buffer
	logMu   *sync.Mutex
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (h *helperEnv) logText() string {
	h.logMu.Lock()
	defer h.logMu.Unlock()
	return h.log.String()
}

// waitLog returns the helper's log once it contains every one of want
// (the log crosses a pipe, so it lags the replies), or after 10 s.
func (h *helperEnv) waitLog(want ...string) string {
	return h.waitFor(func(log string) bool {
		for _, w := range want {
			if !strings.Contains(log, w) {
				return false
			}
		}
		return true
	})
}

// waitFor returns the helper's log once ok accepts it, or after 10 s.
func (h *helperEnv) waitFor(ok func(log string) bool) string {
	deadline := time.Now().Add(10 * time.Second)
	for {
		log := h.logText()
		if ok(log) || time.Now().After(deadline) {
			return log
		}
		time.Sleep(10 * time.Millisecond) // poll the pipe's copy
	}
}

func (h *helperEnv) client() *Client { return &Client{Socket: h.policy.SocketPath()} }

// startHelper writes a policy for owner and starts the helper in a new
// network namespace. The socket's directory is world-searchable so that
// children of other uids reach it. Cleanup stops the helper.
func startHelper(t *testing.T, owner int) *helperEnv {
	t.Helper()
	needRoot(t)
	bin := testBinary(t)
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // children of other uids reach the socket
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	managed := filepath.Join(dir, "state")
	if err := os.MkdirAll(filepath.Join(managed, "vms"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := Policy{OwnerUID: owner, Socket: filepath.Join(dir, "run", "helper.sock"), ManagedDirs: []string{managed},
		Bridge: "bgtestpriv0", CIDR: mustPrefix("172.30.9.0/24"), TapPrefix: "bgtp",
		VMMBinaries: []string{bin}}
	policyFile := filepath.Join(dir, "policy.json")
	if err := p.Write(policyFile); err != nil {
		t.Fatal(err)
	}
	h := &helperEnv{policy: p, managed: managed, log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	cmd := exec.Command(bin, "-test.run=^$", policyFile)
	cmd.Env = append(os.Environ(), childEnv+"=helper")
	cmd.Stderr = lockedBuffer{h.logMu, h.log}
	// No Pdeathsig: it fires when the forking thread exits, and inNetns
	// discards threads. Cleanup stops the helper.
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.cmd = cmd
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("helper exited with %v; log:\n%s", err, h.logText())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("helper did not stop on SIGTERM; log:\n%s", h.logText())
		}
	})
	// Wait for the helper's ping to answer (its socket appears when it listens).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if err := h.client().Ping(ctx); err == nil {
			break
		} else if ctx.Err() != nil {
			t.Fatalf("helper did not answer: %v; log:\n%s", err, h.logText())
		}
		if owner != 0 {
			// root cannot ping a helper owned by someone else: wait for the socket.
			if _, err := os.Stat(p.SocketPath()); err == nil {
				break
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	return h
}

// inNetns runs f on a thread in the network namespace of pid.
func inNetns(t *testing.T, pid int, f func() error) error {
	t.Helper()
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// runClientAs sends req from a child process running as uid and returns
// what it got.
func runClientAs(t *testing.T, uid int, socket string, req Request) clientResult {
	t.Helper()
	b, _ := json.Marshal(req)
	cmd := exec.Command(testBinary(t), "-test.run=^$", socket, string(b))
	cmd.Env = append(os.Environ(), childEnv+"=client")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("client as uid %d: %v: %s", uid, err, errb.String())
	}
	var r clientResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("client output %q: %v", out.String(), err)
	}
	return r
}

// fakeVMM starts the stand-in VMM as uid with the given control socket in
// its argv, waits until its argv is visible, and kills it at cleanup. The
// channel yields its exit state.
func fakeVMM(t *testing.T, uid int, controlSocket string) (VMMTarget, <-chan *os.ProcessState) {
	t.Helper()
	cmd := exec.Command(testBinary(t), "-test.run=^$", "-qmp", "unix:"+controlSocket+",server=on")
	cmd.Env = append(os.Environ(), childEnv+"=vmm")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	state := make(chan *os.ProcessState, 1)
	go func() {
		cmd.Wait()
		state <- cmd.ProcessState
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		argv, _ := proc.Cmdline(cmd.Process.Pid)
		if strings.Contains(strings.Join(argv, " "), controlSocket) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake VMM argv never showed %s: %q", controlSocket, argv)
		}
		time.Sleep(5 * time.Millisecond)
	}
	st, err := proc.StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return VMMTarget{PID: cmd.Process.Pid, StartTime: st, ControlSocket: controlSocket}, state
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
