package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/vmm"
	"banger/internal/vmm/proc"
)

// testQEMU is a real qemu-system-x86_64 with no machine, only a QMP socket.
type testQEMU struct {
	cmd    *exec.Cmd
	sock   string
	done   chan struct{} // closed once the process is reaped
	err    error         // cmd.Wait's result, valid after done
	output *bytes.Buffer
}

// startTestQEMU starts QEMU named bangertest-qmp with a QMP server on a Unix
// socket in a temporary directory. Cleanup kills and reaps it, whatever the
// test's outcome.
func startTestQEMU(t *testing.T) *testQEMU {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	q := &testQEMU{sock: filepath.Join(t.TempDir(), "q.sock"), done: make(chan struct{}), output: &bytes.Buffer{}}
	q.cmd = exec.Command(bin, "-name", "bangertest-qmp", "-M", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:"+q.sock+",server=on,wait=off")
	q.cmd.Stdout, q.cmd.Stderr = q.output, q.output
	if err := q.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		q.err = q.cmd.Wait()
		close(q.done)
	}()
	t.Cleanup(func() {
		select {
		case <-q.done:
		default:
			_ = q.cmd.Process.Kill() // exactly this pid, still our unreaped child
			<-q.done
		}
	})
	return q
}

// dial connects the package's QMP client, polling until QEMU has created the
// socket (bounded, and aborted if QEMU exits).
func (q *testQEMU) dial(t *testing.T) *qmp {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := dialQMP(ctx, q.sock)
		cancel()
		if err == nil {
			t.Cleanup(func() { c.close() })
			return c
		}
		select {
		case <-q.done:
			t.Fatalf("qemu exited before QMP answered (%v): %s", q.err, q.output)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP at %s did not answer: %v", q.sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitExit waits (bounded) for QEMU to exit and returns its wait error.
func (q *testQEMU) waitExit(t *testing.T) error {
	t.Helper()
	select {
	case <-q.done:
		return q.err
	case <-time.After(15 * time.Second):
		t.Fatalf("qemu (pid %d) still running 15s after quit", q.cmd.Process.Pid)
		return nil
	}
}

func execute(t *testing.T, c *qmp, cmd string, args any) json.RawMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.execute(ctx, cmd, args)
	if err != nil {
		t.Fatalf("qmp %s: %v", cmd, err)
	}
	return r
}

type status struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

func queryStatus(t *testing.T, c *qmp) status {
	t.Helper()
	var s status
	if err := json.Unmarshal(execute(t, c, "query-status", nil), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestQMPAgainstQEMU(t *testing.T) {
	q := startTestQEMU(t)
	c := q.dial(t)

	var name struct{ Name string }
	if err := json.Unmarshal(execute(t, c, "query-name", nil), &name); err != nil || name.Name != "bangertest-qmp" {
		t.Errorf("query-name = %+v, %v; want bangertest-qmp", name, err)
	}
	if s := queryStatus(t, c); s.Status != "running" || !s.Running {
		t.Errorf("query-status = %+v, want running", s)
	}

	// stop and cont each emit an event (STOP, RESUME) around their reply;
	// the client must skip them and return the command's own result.
	execute(t, c, "stop", nil)
	if s := queryStatus(t, c); s.Status != "paused" || s.Running {
		t.Errorf("query-status after stop = %+v, want paused", s)
	}
	execute(t, c, "cont", nil)
	if s := queryStatus(t, c); s.Status != "running" {
		t.Errorf("query-status after cont = %+v, want running", s)
	}

	// Arguments are passed through.
	var help []struct{ Name string }
	if err := json.Unmarshal(execute(t, c, "qom-list", map[string]string{"path": "/machine"}), &help); err != nil || len(help) == 0 {
		t.Errorf("qom-list /machine = %v, %v; want properties", help, err)
	}

	// QMP errors come back as Go errors naming the command and class.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.execute(ctx, "bangertest-no-such-command", nil)
	if err == nil || !strings.Contains(err.Error(), "qmp bangertest-no-such-command: CommandNotFound") {
		t.Errorf("unknown command error = %v, want CommandNotFound", err)
	}
	_, err = c.execute(ctx, "qom-list", map[string]string{"path": "/bangertest/nowhere"})
	if err == nil || !strings.Contains(err.Error(), "qmp qom-list: DeviceNotFound") {
		t.Errorf("bad argument error = %v, want DeviceNotFound", err)
	}
	// The connection is still usable after errors.
	if s := queryStatus(t, c); s.Status != "running" {
		t.Errorf("query-status after errors = %+v", s)
	}

	// quit answers, then QEMU exits cleanly.
	execute(t, c, "quit", nil)
	if err := q.waitExit(t); err != nil {
		t.Errorf("qemu exit after quit: %v\n%s", err, q.output)
	}
	if _, err := c.execute(ctx, "query-status", nil); err == nil {
		t.Error("execute on a quit QEMU succeeded")
	}
}

// Adopt re-attaches to a running QEMU from its handle; Quit makes it exit and
// Done reports it.
func TestAdoptAndQuitRealQEMU(t *testing.T) {
	q := startTestQEMU(t)
	// Wait until QMP answers, then hang up: QEMU serves one QMP client at a
	// time, and Adopt must get the socket.
	q.dial(t).close()
	pid := q.cmd.Process.Pid
	st, err := proc.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	d := New(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// A handle whose start time does not match is a recycled pid: refused.
	if _, err := d.Adopt(ctx, vmm.Handle{Driver: "qemu", PID: pid, StartTime: st + 1, ControlSocket: q.sock}); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Adopt with a wrong start time: %v, want ErrNotRunning", err)
	}
	// So is a process whose argv does not mention the control socket.
	if _, err := d.Adopt(ctx, vmm.Handle{Driver: "qemu", PID: pid, StartTime: st, ControlSocket: q.sock + ".other"}); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Adopt with another socket: %v, want ErrNotRunning", err)
	}

	h := vmm.Handle{Driver: "qemu", PID: pid, StartTime: st, ControlSocket: q.sock, Accel: "tcg"}
	m, err := d.Adopt(ctx, h)
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	defer m.Close()
	if m.(*machine).q == nil {
		t.Fatal("Adopt did not connect to QMP")
	}
	if m.Handle() != h {
		t.Errorf("Handle() = %+v, want %+v", m.Handle(), h)
	}
	select {
	case <-m.Done():
		t.Fatal("Done closed while QEMU runs")
	default:
	}
	if err := m.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	select {
	case <-m.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("Done not closed 15s after Quit")
	}
	if err := q.waitExit(t); err != nil {
		t.Errorf("qemu exit after Quit: %v", err)
	}
	// The process is gone: signalling it is refused rather than hitting a
	// recycled pid.
	if err := m.Signal(syscall.SIGTERM); err == nil {
		t.Error("Signal after exit succeeded")
	}
	if _, err := d.Adopt(ctx, h); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Adopt after exit: %v, want ErrNotRunning", err)
	}
}

// fakeQMP serves one connection on a Unix socket with the given handler.
func fakeQMP(t *testing.T, handle func(conn net.Conn, rd *bufio.Reader)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	go func() {
		defer close(done)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		handle(conn, bufio.NewReader(conn))
	}()
	return sock
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}` + "\n"

func TestDialQMPRejectsNonQMP(t *testing.T) {
	for _, tc := range []struct {
		name, greeting, want string
	}{
		{"not json", "SSH-2.0-OpenSSH_9.2\n", "qmp greeting: unexpected"},
		{"json without QMP", `{"hello": 1}` + "\n", "qmp greeting: unexpected"},
		{"closed", "", "qmp greeting: EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := fakeQMP(t, func(conn net.Conn, _ *bufio.Reader) { conn.Write([]byte(tc.greeting)) })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := dialQMP(ctx, sock)
			if err == nil {
				c.close()
				t.Fatal("dialQMP accepted a non-QMP peer")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("dialQMP error %q, want %q", err, tc.want)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dialQMP(ctx, filepath.Join(t.TempDir(), "absent.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dialQMP to a missing socket: %v, want ENOENT", err)
	}
}

// A command that gets no answer fails at the context's deadline instead of
// blocking forever.
func TestQMPExecuteHonoursDeadline(t *testing.T) {
	sock := fakeQMP(t, func(conn net.Conn, rd *bufio.Reader) {
		conn.Write([]byte(greeting))
		rd.ReadBytes('\n') // qmp_capabilities
		conn.Write([]byte(`{"return": {}}` + "\n"))
		rd.ReadBytes('\n') // the command that is never answered
		rd.ReadBytes('\n') // returns when the client closes
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	short, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	start := time.Now()
	_, err = c.execute(short, "query-status", nil)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("execute without answer: %v, want a deadline error", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("execute returned after %v, want ~200ms", el)
	}
}

// A reply that is not JSON is reported, not silently taken as success.
func TestQMPExecuteBadReply(t *testing.T) {
	sock := fakeQMP(t, func(conn net.Conn, rd *bufio.Reader) {
		conn.Write([]byte(greeting))
		rd.ReadBytes('\n')
		conn.Write([]byte(`{"return": {}}` + "\n"))
		rd.ReadBytes('\n')
		conn.Write([]byte("garbage\n"))
		rd.ReadBytes('\n')
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if _, err := c.execute(ctx, "query-status", nil); err == nil || !strings.Contains(err.Error(), "bad reply") {
		t.Errorf("execute with a garbage reply: %v, want \"bad reply\"", err)
	}
}
