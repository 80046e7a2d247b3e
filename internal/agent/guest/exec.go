package guest

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"banger/internal/agent"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// DefaultPath is PATH for commands unless the request sets it.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// signals the host may send.
var signals = map[string]syscall.Signal{
	"SIGHUP": unix.SIGHUP, "SIGINT": unix.SIGINT, "SIGQUIT": unix.SIGQUIT,
	"SIGKILL": unix.SIGKILL, "SIGUSR1": unix.SIGUSR1, "SIGUSR2": unix.SIGUSR2,
	"SIGPIPE": unix.SIGPIPE, "SIGTERM": unix.SIGTERM, "SIGCONT": unix.SIGCONT,
	"SIGSTOP": unix.SIGSTOP, "SIGTSTP": unix.SIGTSTP, "SIGWINCH": unix.SIGWINCH,
}

// ParseSignal maps "SIGTERM" or "TERM" to the signal, for the signals the
// agent delivers.
func ParseSignal(name string) (syscall.Signal, bool) {
	name = strings.ToUpper(strings.TrimSpace(name))
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig, ok := signals[name]
	return sig, ok
}

// commandEnv is the default environment plus the request's additions.
func commandEnv(req *agent.ExecRequest) ([]string, error) {
	env := []string{"PATH=" + DefaultPath, "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/sh"}
	if req.TTY {
		term := req.Term
		if term == "" {
			term = "xterm-256color"
		}
		env = append(env, "TERM="+term)
	}
	for _, kv := range req.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsRune(kv, 0) {
			return nil, fmt.Errorf("bad environment entry %q (want KEY=VALUE)", kv)
		}
		env = slicesDeleteKey(env, k)
		env = append(env, kv)
	}
	return env, nil
}

func slicesDeleteKey(env []string, key string) []string {
	out := env[:0]
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k != key {
			out = append(out, kv)
		}
	}
	return out
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

// lookPath finds file in the command's PATH (not the agent's).
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	for _, dir := range filepath.SplitList(envValue(env, "PATH")) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q: executable file not found in $PATH", file)
}

// running is one started command.
type running struct {
	cmd  *exec.Cmd
	pid  int
	tty  *os.File // the PTY master, if any
	fw   *agent.FrameWriter
	mu   sync.Mutex
	done bool // the command was reaped: its pid must not be signalled
}

// signal sends sig to the command's process group unless it was reaped.
func (r *running) signal(sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.done {
		unix.Kill(-r.pid, sig)
	}
}

func (s *Server) exec(ctx context.Context, req *agent.ExecRequest, br *bufio.Reader, st io.ReadWriteCloser) {
	fw := &agent.FrameWriter{W: st}
	fail := func(err error) { agent.WriteJSONLine(st, agent.Response{Error: err.Error()}) }
	if req == nil || len(req.Argv) == 0 {
		fail(errors.New("empty argv"))
		return
	}
	env, err := commandEnv(req)
	if err != nil {
		fail(err)
		return
	}
	path, err := lookPath(req.Argv[0], env)
	if err != nil {
		fail(err)
		return
	}
	dir := req.Dir
	if dir == "" {
		dir = "/root"
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			dir = "/"
		}
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		fail(fmt.Errorf("working directory %s: %w", dir, err))
		return
	}
	cmd := &exec.Cmd{Path: path, Args: req.Argv, Env: env, Dir: dir}
	r := &running{cmd: cmd, fw: fw}

	var stdin io.WriteCloser // pipe write end, or the PTY master
	var outputs []*os.File   // read ends to forward
	var types []byte
	if req.TTY {
		ws := agent.WinSize{Rows: req.Rows, Cols: req.Cols}
		if ws.Rows == 0 || ws.Cols == 0 {
			ws = agent.WinSize{Rows: 24, Cols: 80}
		}
		ptmx, tty, err := openPTY(ws)
		if err != nil {
			fail(err)
			return
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		err = cmd.Start()
		tty.Close()
		if err != nil {
			ptmx.Close()
			fail(err)
			return
		}
		r.tty = ptmx
		stdin = ptmx
		outputs, types = []*os.File{ptmx}, []byte{agent.FrameStdout}
	} else {
		var files []*os.File
		pipe := func() (*os.File, *os.File) {
			pr, pw, err2 := os.Pipe()
			if err2 != nil && err == nil {
				err = err2
			}
			files = append(files, pr, pw)
			return pr, pw
		}
		inR, inW := pipe()
		outR, outW := pipe()
		errR, errW := pipe()
		if err == nil {
			cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			err = cmd.Start()
		}
		for _, f := range []*os.File{inR, outW, errW} {
			if f != nil {
				f.Close()
			}
		}
		if err != nil {
			for _, f := range files {
				if f != nil {
					f.Close()
				}
			}
			fail(err)
			return
		}
		stdin = inW
		outputs, types = []*os.File{outR, errR}, []byte{agent.FrameStdout, agent.FrameStderr}
	}
	r.pid = cmd.Process.Pid
	if err := agent.WriteJSONLine(st, agent.Response{PID: r.pid, StdinWindow: agent.StdinWindow}); err != nil {
		r.signal(unix.SIGKILL)
	}

	// Output pumps: forward until EOF (or EIO on a PTY whose every slave fd
	// closed); keep draining if the host is gone, so the command never
	// blocks on a full pipe.
	var pumps sync.WaitGroup
	for i, f := range outputs {
		pumps.Add(1)
		go func(f *os.File, typ byte) {
			defer pumps.Done()
			buf := make([]byte, agent.DataChunk)
			forward := true
			for {
				n, err := f.Read(buf)
				if n > 0 && forward {
					forward = fw.Frame(typ, buf[:n]) == nil
				}
				if err != nil {
					return
				}
			}
		}(f, types[i])
	}

	// Stdin: a queue the host fills within its credit, drained to the
	// command by one goroutine, so the frame reader never blocks.
	q := newStdinQueue()
	stdinDone := make(chan struct{})
	go func() {
		defer close(stdinDone)
		r.writeStdin(q, stdin, req.TTY)
	}()

	// Frames from the host.
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer q.close()
		for {
			typ, payload, err := agent.ReadFrame(br)
			if err != nil {
				// The host is gone (or closed the stream early).
				r.signal(unix.SIGKILL)
				return
			}
			switch typ {
			case agent.FrameStdin:
				q.push(payload)
			case agent.FrameCloseStdin:
				q.pushClose()
			case agent.FrameResize:
				if ws, err := agent.DecodeWinSize(payload); err == nil && r.tty != nil {
					setWinsize(r.tty, ws)
				}
			case agent.FrameSignal:
				if sig, ok := ParseSignal(string(payload)); ok {
					r.signal(sig)
				} else {
					s.logf("exec %d: ignoring signal %q", r.pid, payload)
				}
			}
		}
	}()
	stopCtx := context.AfterFunc(ctx, func() { r.signal(unix.SIGKILL) })
	defer stopCtx()

	werr := cmd.Wait()
	r.mu.Lock()
	r.done = true
	r.mu.Unlock()
	status := exitStatus(cmd)
	if cmd.ProcessState == nil {
		s.logf("exec %d: wait: %v", r.pid, werr)
	}

	// Forward the rest of the output, but not for ever: a background child
	// may hold the pipes open.
	pumped := make(chan struct{})
	go func() { pumps.Wait(); close(pumped) }()
	t := time.NewTimer(agent.OutputGrace)
	select {
	case <-pumped:
	case <-t.C:
	}
	t.Stop()
	for _, f := range outputs {
		f.Close() // with a PTY, also the stdin side
	}
	<-pumped
	q.close()
	stdin.Close() // unblocks a write to a child that holds stdin unread
	<-stdinDone
	fw.JSON(agent.FrameExit, status)
	st.Close()
	// The host closes its side on the exit frame; bound the wait anyway.
	if d, ok := st.(interface{ SetReadDeadline(time.Time) error }); ok {
		d.SetReadDeadline(time.Now().Add(30 * time.Second))
	}
	<-readerDone
}

func exitStatus(cmd *exec.Cmd) agent.ExitStatus {
	ps := cmd.ProcessState
	if ps == nil {
		return agent.ExitStatus{Code: -1}
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return agent.ExitStatus{Code: -1, Signal: unix.SignalName(ws.Signal()), SignalNumber: int(ws.Signal())}
	}
	return agent.ExitStatus{Code: ps.ExitCode()}
}

// writeStdin drains q into w, granting the host credit for what it wrote.
func (r *running) writeStdin(q *stdinQueue, w io.WriteCloser, tty bool) {
	broken := false
	for {
		data, closeIt, ok := q.pop()
		if !ok {
			return
		}
		if closeIt {
			if tty {
				// A terminal has no half-close: send its EOF character.
				if !broken {
					w.Write([]byte{eofChar(r.tty)})
				}
			} else {
				w.Close()
				broken = true
			}
			continue
		}
		if !broken {
			if _, err := w.Write(data); err != nil {
				broken = true // the command closed its stdin or exited
			}
		}
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(len(data)))
		r.fw.Frame(agent.FrameCredit, b[:])
	}
}

// openPTY opens a pseudo-terminal of size ws. creack/pty's ioctls go
// through os.File.Fd, which leaves the master in blocking mode, where Close
// cannot interrupt a pending Read; the master is therefore reopened through
// a nonblocking duplicate, and later ioctls go through SyscallConn.
func openPTY(ws agent.WinSize) (master, tty *os.File, err error) {
	p, tty, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	fd, err := unix.FcntlInt(p.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	p.Close()
	if err == nil {
		err = unix.SetNonblock(fd, true)
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		tty.Close()
		return nil, nil, err
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	if err := setWinsize(master, ws); err != nil {
		master.Close()
		tty.Close()
		return nil, nil, err
	}
	return master, tty, nil
}

func ptyControl(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// setWinsize resizes the terminal; the kernel sends SIGWINCH to its
// foreground process group.
func setWinsize(master *os.File, ws agent.WinSize) error {
	return ptyControl(master, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: ws.Rows, Col: ws.Cols})
	})
}

// eofChar is the terminal's VEOF character (^D by default).
func eofChar(master *os.File) byte {
	c := byte(4)
	ptyControl(master, func(fd int) error {
		t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err == nil && t.Cc[unix.VEOF] != 0 {
			c = t.Cc[unix.VEOF]
		}
		return err
	})
	return c
}

// stdinQueue holds the host's stdin frames until the command reads them.
// The host's credit bounds it to agent.StdinWindow bytes.
type stdinQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []stdinItem
	closed bool
}

type stdinItem struct {
	data    []byte
	closeIt bool
}

func newStdinQueue() *stdinQueue {
	q := &stdinQueue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *stdinQueue) push(b []byte) { q.add(stdinItem{data: b}) }
func (q *stdinQueue) pushClose()    { q.add(stdinItem{closeIt: true}) }
func (q *stdinQueue) add(it stdinItem) {
	q.mu.Lock()
	if !q.closed {
		q.items = append(q.items, it)
		q.cond.Signal()
	}
	q.mu.Unlock()
}

func (q *stdinQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.items = nil
	q.cond.Broadcast()
	q.mu.Unlock()
}

func (q *stdinQueue) pop() (data []byte, closeIt, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return nil, false, false
	}
	it := q.items[0]
	q.items = q.items[1:]
	return it.data, it.closeIt, true
}
