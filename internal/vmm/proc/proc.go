// Package proc starts VMM processes detached from the daemon and identifies
// them afterwards by pid plus kernel start time, so a recycled pid is never
// mistaken for our VMM.
package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrGone means the process no longer exists or is a different process now.
var ErrGone = errors.New("process is gone or was replaced")

// StartTime returns field 22 of /proc/<pid>/stat (start time in clock ticks
// since boot), which together with the pid identifies a process uniquely.
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may contain spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: short", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// Cmdline returns the argv of a process.
func Cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// Verify checks that pid is still the process that started at startTime and
// that its argv contains marker (typically the control socket path). It
// returns ErrGone otherwise.
func Verify(pid int, startTime uint64, marker string) error {
	if pid <= 0 {
		return ErrGone
	}
	st, err := StartTime(pid)
	if err != nil || st != startTime {
		return ErrGone
	}
	if state, _ := procState(pid); state == "Z" {
		return ErrGone
	}
	if marker != "" {
		argv, err := Cmdline(pid)
		if err != nil {
			return ErrGone
		}
		found := false
		for _, a := range argv {
			if strings.Contains(a, marker) {
				found = true
				break
			}
		}
		if !found {
			return ErrGone
		}
	}
	return nil
}

func procState(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) == 0 {
		return "", fmt.Errorf("parse stat")
	}
	return f[0], nil
}

// Process is a VMM process we started or adopted.
type Process struct {
	PID       int
	StartTime uint64
	Marker    string
	done      chan struct{}
	// child is set when Start started the process: until it is reaped its
	// pid cannot be reused, and os.Process signals it through a pidfd.
	child *os.Process
}

// Start runs argv in a new session (so daemon signals and exits do not reach
// it) with stdin from /dev/null and stdout/stderr appended to logPath. The
// daemon reaps it while it lives; after a daemon restart, Adopt watches it.
func Start(argv []string, logPath, marker string, extraFiles ...*os.File) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = extraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	st, err := StartTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("read start time of %s: %w", argv[0], err)
	}
	p := &Process{PID: cmd.Process.Pid, StartTime: st, Marker: marker, done: make(chan struct{}), child: cmd.Process}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Adopt watches a process started by an earlier daemon. It verifies identity
// first and returns ErrGone when the process is not ours any more.
func Adopt(pid int, startTime uint64, marker string) (*Process, error) {
	if err := Verify(pid, startTime, marker); err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, ErrGone
	}
	// Re-check after opening the pidfd, closing the recycle window.
	if err := Verify(pid, startTime, marker); err != nil {
		unix.Close(fd)
		return nil, err
	}
	p := &Process{PID: pid, StartTime: startTime, Marker: marker, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n > 0 {
				return
			}
		}
	}()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig after verifying the process is still ours.
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return ErrGone
	default:
	}
	if p.child != nil {
		// Our own unreaped child is ours by construction. Verify could
		// refuse it just after Start: the kernel resumes the parent
		// before the new program's argv is set up, so for a moment
		// /proc/<pid>/cmdline is empty and the marker is not found.
		if err := p.child.Signal(sig); err != nil {
			if errors.Is(err, os.ErrProcessDone) {
				return ErrGone
			}
			return err
		}
		return nil
	}
	if err := Verify(p.PID, p.StartTime, p.Marker); err != nil {
		return err
	}
	return syscall.Kill(p.PID, sig)
}

// Wait waits for exit or ctx.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// KillAndWait sends SIGKILL and waits up to timeout for the process to exit.
func (p *Process) KillAndWait(timeout time.Duration) error {
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, ErrGone) {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("process %d did not exit within %s after SIGKILL", p.PID, timeout)
	}
}
