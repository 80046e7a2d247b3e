package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/agent"
	"banger/internal/agent/guest"
)

func run(t *testing.T, c *agent.Client, req agent.ExecRequest, stdin io.Reader) (agent.ExitStatus, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	st, err := c.Exec(testCtx(t), req, stdin, &out, &errb, nil)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Argv, err)
	}
	return st, out.String(), errb.String()
}

func TestExec(t *testing.T) {
	c := startGuest(t, 0).dial(t)

	t.Run("exit code", func(t *testing.T) {
		st, _, _ := run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", "exit 42"}}, nil)
		if st.Code != 42 || st.Signal != "" || st.ShellCode() != 42 {
			t.Fatalf("status = %+v", st)
		}
	})
	t.Run("exact argv", func(t *testing.T) {
		_, out, _ := run(t, c, agent.ExecRequest{Argv: []string{"printf", "%s|", "a b", "c"}}, nil)
		if out != "a b|c|" {
			t.Fatalf("out = %q", out)
		}
		_, out, _ = run(t, c, agent.ExecRequest{Argv: []string{"printf", "%s|", "$HOME", "*", "`x`;", ""}}, nil)
		if out != "$HOME|*|`x`;||" {
			t.Fatalf("out = %q (a shell got involved?)", out)
		}
	})
	t.Run("stdin round trip", func(t *testing.T) {
		// More than the stdin window, so credits must flow.
		in := make([]byte, 3*agent.StdinWindow+12345)
		rand.Read(in)
		st, out, _ := run(t, c, agent.ExecRequest{Argv: []string{"cat"}}, bytes.NewReader(in))
		if st.Code != 0 || out != string(in) {
			t.Fatalf("status %v, %d bytes back of %d, equal=%v", st, len(out), len(in), out == string(in))
		}
	})
	t.Run("no stdin is EOF", func(t *testing.T) {
		st, out, _ := run(t, c, agent.ExecRequest{Argv: []string{"wc", "-c"}}, nil)
		if st.Code != 0 || strings.TrimSpace(out) != "0" {
			t.Fatalf("%v %q", st, out)
		}
	})
	t.Run("separate stderr", func(t *testing.T) {
		st, out, errOut := run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}}, nil)
		if st.Code != 3 || out != "out\n" || errOut != "err\n" {
			t.Fatalf("%v stdout %q stderr %q", st, out, errOut)
		}
	})
	t.Run("env and cwd", func(t *testing.T) {
		dir := t.TempDir()
		_, out, _ := run(t, c, agent.ExecRequest{
			Argv: []string{"sh", "-c", `printf '%s|%s|%s|%s|%s' "$FOO" "$HOME" "$(pwd)" "$PATH" "$USER"`},
			Env:  []string{"FOO=bar baz=1", "USER=someone"},
			Dir:  dir,
		}, nil)
		want := "bar baz=1|/root|" + dir + "|" + guest.DefaultPath + "|someone"
		if out != want {
			t.Fatalf("out = %q, want %q", out, want)
		}
		// PATH from the request is the one argv[0] is looked up in.
		_, out, _ = run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", "echo $PATH"}, Env: []string{"PATH=/bin"}}, nil)
		if out != "/bin\n" {
			t.Fatalf("out = %q", out)
		}
	})
	t.Run("start errors", func(t *testing.T) {
		ctx := testCtx(t)
		for _, tc := range []struct {
			req  agent.ExecRequest
			want string
		}{
			{agent.ExecRequest{Argv: []string{"no-such-command-banger"}}, "executable file not found"},
			{agent.ExecRequest{Argv: []string{"/no/such/file"}}, "no such file"},
			{agent.ExecRequest{Argv: []string{"true"}, Dir: "/no/such/dir"}, "/no/such/dir"},
			{agent.ExecRequest{Argv: []string{"true"}, Env: []string{"NOEQUALS"}}, "bad environment entry"},
			{agent.ExecRequest{}, "empty argv"},
		} {
			_, err := c.Exec(ctx, tc.req, nil, nil, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%+v: err = %v, want it to mention %q", tc.req, err, tc.want)
			}
		}
	})
}

func TestExecPTY(t *testing.T) {
	c := startGuest(t, 0).dial(t)

	t.Run("tty", func(t *testing.T) {
		st, out, errOut := run(t, c, agent.ExecRequest{Argv: []string{"tty"}, TTY: true}, nil)
		if st.Code != 0 || !regexp.MustCompile(`^/dev/pts/\d+\r?\n$`).MatchString(out) || errOut != "" {
			t.Fatalf("%v stdout %q stderr %q", st, out, errOut)
		}
		st, out, _ = run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", "echo $TERM; echo e >&2"}, TTY: true, Term: "vt100"}, nil)
		if out != "vt100\r\ne\r\n" {
			t.Fatalf("with a PTY stderr joins stdout: %q", out)
		}
	})

	t.Run("resize", func(t *testing.T) {
		ctx := testCtx(t)
		out := newWatchBuf()
		stdinR, stdinW := io.Pipe()
		defer stdinW.Close()
		p, err := c.Start(ctx, agent.ExecRequest{
			Argv: []string{"sh", "-c", "stty size; read x; stty size"}, TTY: true, Rows: 24, Cols: 80,
		}, stdinR, out, nil)
		if err != nil {
			t.Fatal(err)
		}
		killOnCleanup(t, p.PID)
		out.waitFor(t, "24 80")
		if err := p.Resize(agent.WinSize{Rows: 40, Cols: 100}); err != nil {
			t.Fatal(err)
		}
		// Frames are ordered: the resize is applied before this line arrives.
		io.WriteString(stdinW, "go\n")
		st, err := p.Wait()
		if err != nil || st.Code != 0 {
			t.Fatalf("%v %v", st, err)
		}
		if got := out.String(); !strings.Contains(got, "40 100") {
			t.Fatalf("output %q lacks the new size", got)
		}
	})

	t.Run("resize channel", func(t *testing.T) {
		// Through Exec's resize channel; the shell reports SIGWINCH.
		ctx := testCtx(t)
		out := newWatchBuf()
		stdinR, stdinW := io.Pipe()
		defer stdinW.Close()
		resize := make(chan agent.WinSize)
		done := make(chan struct{})
		var st agent.ExitStatus
		var err error
		go func() {
			defer close(done)
			st, err = c.Exec(ctx, agent.ExecRequest{
				Argv: []string{"sh", "-c", `trap 'stty size; exit 5' WINCH; echo ready; while :; do read x; done`}, TTY: true,
			}, stdinR, out, nil, resize)
		}()
		out.waitFor(t, "ready")
		resize <- agent.WinSize{Rows: 33, Cols: 111}
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Fatalf("no exit after the resize; output %q", out.String())
		}
		if err != nil || st.Code != 5 || !strings.Contains(out.String(), "33 111") {
			t.Fatalf("%v %v %q", st, err, out.String())
		}
	})

	t.Run("stdin EOF", func(t *testing.T) {
		st, out, _ := run(t, c, agent.ExecRequest{Argv: []string{"cat"}, TTY: true}, strings.NewReader("hello\n"))
		// The terminal echoes the line, cat repeats it, ^D ends cat.
		if st.Code != 0 || strings.Count(out, "hello") != 2 {
			t.Fatalf("%v %q", st, out)
		}
	})
}

func TestExecSignals(t *testing.T) {
	c := startGuest(t, 0).dial(t)

	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGKILL, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			p, err := c.Start(testCtx(t), agent.ExecRequest{Argv: []string{"sleep", "1000"}}, nil, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			killOnCleanup(t, p.PID)
			if err := p.Signal(sig); err != nil {
				t.Fatal(err)
			}
			st, err := p.Wait()
			if err != nil || st.Signal != "SIG"+strings.TrimPrefix(strings.ToUpper(sigName(sig)), "SIG") || st.Code != -1 || st.ShellCode() != 128+int(sig) {
				t.Fatalf("%+v %v", st, err)
			}
		})
	}

	t.Run("process group and trap", func(t *testing.T) {
		// The signal reaches the whole group: the shell's trap runs and the
		// background sleep dies too.
		out := newWatchBuf()
		p, err := c.Start(testCtx(t), agent.ExecRequest{
			Argv: []string{"sh", "-c", `trap 'echo got TERM; exit 7' TERM; sleep 1000 & echo $!; wait`},
		}, nil, out, nil)
		if err != nil {
			t.Fatal(err)
		}
		killOnCleanup(t, p.PID)
		sleepPid := parsePids(t, strings.TrimSpace(out.waitFor(t, "\n")))[0]
		killOnCleanup(t, sleepPid)
		// Until the child has exec'd sleep it is a copy of the shell whose
		// signal handler would swallow the TERM.
		waitExec(t, sleepPid, "sleep")
		p.Signal(syscall.SIGTERM)
		st, err := p.Wait()
		if err != nil || st.Code != 7 || !strings.Contains(out.String(), "got TERM") {
			t.Fatalf("%v %v %q", st, err, out.String())
		}
		waitGone(t, sleepPid)
	})

	t.Run("signal with stdin unread", func(t *testing.T) {
		// The command never reads stdin and the host has much more to send:
		// the signal must still get through (stdin is flow-controlled).
		out := newWatchBuf()
		p, err := c.Start(testCtx(t), agent.ExecRequest{Argv: []string{"sh", "-c", "echo ready; exec sleep 1000"}},
			io.LimitReader(zeroReader{}, 64<<20), out, nil)
		if err != nil {
			t.Fatal(err)
		}
		killOnCleanup(t, p.PID)
		out.waitFor(t, "ready")
		p.Signal(syscall.SIGTERM)
		st, err := p.Wait()
		if err != nil || st.Signal != "SIGTERM" {
			t.Fatalf("%v %v", st, err)
		}
	})
}

func sigName(s syscall.Signal) string {
	return map[syscall.Signal]string{syscall.SIGINT: "INT", syscall.SIGTERM: "TERM", syscall.SIGKILL: "KILL", syscall.SIGHUP: "HUP"}[s]
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestExecContextCancel(t *testing.T) {
	c := startGuest(t, 0).dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := newWatchBuf()
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		_, err = c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "sleep 1000 & echo $$ $!; wait"}}, nil, out, nil, nil)
	}()
	pids := parsePids(t, strings.TrimSpace(out.waitFor(t, "\n")))
	killOnCleanup(t, pids...)
	start := time.Now()
	cancel()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Exec did not return after cancel")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d >= agent.KillGrace {
		t.Fatalf("Exec took %v to return after cancel", d)
	}
	// The shell was reaped before the agent reported its end; the
	// background sleep in its group was killed too.
	if !processGone(pids[0]) {
		t.Fatalf("shell %d still running after Exec returned", pids[0])
	}
	waitGone(t, pids[1])

	// The connection is still good.
	if _, err := c.Health(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestExecBackgroundChildHoldsOutput(t *testing.T) {
	// A background child that keeps stdout (or the terminal) open must not
	// hold the exec open: the agent forwards output for OutputGrace after
	// the command exits, then reports the exit.
	c := startGuest(t, 0).dial(t)
	for _, tty := range []bool{false, true} {
		name := "pipes"
		if tty {
			name = "pty"
		}
		t.Run(name, func(t *testing.T) {
			out := newWatchBuf()
			done := make(chan struct{})
			var st agent.ExitStatus
			var err error
			go func() {
				defer close(done)
				// The child inherits an ignored SIGHUP, so the terminal's
				// hangup when the shell exits does not end it.
				st, err = c.Exec(testCtx(t), agent.ExecRequest{
					Argv: []string{"sh", "-c", `trap '' HUP; sleep 1000 & echo $!`}, TTY: tty,
				}, nil, out, nil, nil)
			}()
			pid := parsePids(t, strings.TrimSpace(out.waitFor(t, "\n")))[0]
			killOnCleanup(t, pid)
			select {
			case <-done:
			case <-time.After(testTimeout):
				t.Fatal("exec held open by a background child")
			}
			if err != nil || st.Code != 0 {
				t.Fatalf("%v %v", st, err)
			}
			if processGone(pid) {
				t.Fatal("the background child should have survived")
			}
		})
	}
}
