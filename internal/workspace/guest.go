package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Guest runs commands in the guest (over SSH or the guest agent).
// Implementations pass argv exactly (no shell re-tokenising) and return the
// exit status. err is for transport failures (and cancellation), not for a
// command that ran and failed.
type Guest interface {
	Run(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error)
}

// Local is a Guest that runs commands on this host. Guest paths are host
// paths, so tests point Options.Dest at a temporary directory standing in for
// the guest's filesystem.
type Local struct {
	// Env is appended to this process's environment for every command.
	Env []string
}

// Run implements Guest. A command that is not found exits 127, as it would
// through a shell; one killed by a signal exits 128+signal.
func (l Local) Run(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if len(argv) == 0 {
		return -1, errors.New("workspace: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if len(l.Env) > 0 {
		cmd.Env = append(os.Environ(), l.Env...)
		// The command itself is found on Env's PATH too, as a guest
		// with that PATH would find it.
		if p, ok := envPath(l.Env); ok && !strings.Contains(argv[0], "/") {
			cmd.Path, cmd.Err = lookPathIn(argv[0], p)
		}
	}
	err := cmd.Run()
	if ctx.Err() != nil {
		return -1, ctx.Err()
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	case errors.Is(err, exec.ErrNotFound):
		if stderr != nil {
			fmt.Fprintf(stderr, "%s: command not found\n", argv[0])
		}
		return 127, nil
	}
	return -1, err
}

func envPath(env []string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], "PATH="); ok {
			return v, true
		}
	}
	return "", false
}

func lookPathIn(name, pathList string) (string, error) {
	for _, dir := range filepath.SplitList(pathList) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
}

// CommandError is a guest command that ran and exited non-zero.
type CommandError struct {
	Step     string // what banger was doing, e.g. "extract files"
	ExitCode int
	Stderr   string // trimmed, at most a few KiB
}

func (e *CommandError) Error() string {
	msg := fmt.Sprintf("guest: %s: exit status %d", e.Step, e.ExitCode)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

// capBuffer keeps the first max bytes written to it.
type capBuffer struct {
	buf bytes.Buffer
	max int
}

func (c *capBuffer) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room > 0 {
		if len(p) <= room {
			c.buf.Write(p)
		} else {
			c.buf.Write(p[:room])
		}
	}
	return len(p), nil
}

func (c *capBuffer) String() string { return strings.TrimSpace(c.buf.String()) }

// runGuest runs argv and turns a non-zero exit into a *CommandError.
func runGuest(ctx context.Context, g Guest, step string, argv []string, stdin io.Reader, stdout io.Writer) error {
	errb := &capBuffer{max: 4096}
	code, err := g.Run(ctx, argv, stdin, stdout, errb)
	if err != nil {
		return fmt.Errorf("guest: %s: %w", step, err)
	}
	if code != 0 {
		return &CommandError{Step: step, ExitCode: code, Stderr: errb.String()}
	}
	return nil
}

// shArgv is `sh -c script sh args...`: one round trip, values as
// positional parameters.
func shArgv(script string, args ...string) []string {
	return append([]string{"sh", "-c", script, "sh"}, args...)
}

// keyValues parses "key=value" lines printed by the guest scripts.
func keyValues(b []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			m[k] = v
		}
	}
	return m
}
