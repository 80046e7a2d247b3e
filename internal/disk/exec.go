package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// run executes name with args (no shell) and returns its stdout. A failure
// names the command and includes its stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	return runInput(ctx, nil, name, args...)
}

// runInput is run with stdin connected to in (nil: no input).
func runInput(ctx context.Context, in io.Reader, name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = in
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), cmdError(name, args, err, stderr.String())
	}
	return stdout.String(), nil
}

// cmdError formats a failed command: "mkfs.ext4 -q ...: exit status 1: <stderr>".
func cmdError(name string, args []string, err error, stderr string) error {
	msg := strings.TrimSpace(stderr)
	if msg == "" {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
}

// exitCode returns the exit status of a command error, or -1.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Bounded retry on EBUSY, shared by file removal and dm teardown.
const (
	busyRetries = 10
	busyDelay   = 100 * time.Millisecond
)

// removeFile deletes path, retrying a few times on EBUSY. A missing file is
// not an error.
func removeFile(ctx context.Context, path string) error {
	if path == "" {
		return nil
	}
	var err error
	for i := 0; i < busyRetries; i++ {
		err = os.Remove(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return err
		}
		if serr := sleepCtx(ctx, busyDelay); serr != nil {
			return fmt.Errorf("%w (still busy: %v)", serr, err)
		}
	}
	return fmt.Errorf("gave up after %d tries: %w", busyRetries, err)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// fileSize returns the size of a regular file.
func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is not a regular file", path)
	}
	return fi.Size(), nil
}

// unavailableError carries the reason a backend cannot run; it matches
// ErrUnavailable with errors.Is but prints only the reason.
type unavailableError struct{ reason string }

func (e *unavailableError) Error() string { return e.reason }
func (e *unavailableError) Unwrap() error { return ErrUnavailable }

func unavailable(format string, args ...any) error {
	return &unavailableError{reason: fmt.Sprintf(format, args...)}
}

// needTool reports ErrUnavailable when a tool is not in PATH.
func needTool(name string) error {
	if _, err := exec.LookPath(name); err != nil {
		return unavailable("%s not found in PATH", name)
	}
	return nil
}
