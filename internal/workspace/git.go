package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// gitError is a host git command that failed.
type gitError struct {
	args   []string
	code   int
	stderr string
}

func (e *gitError) Error() string {
	msg := fmt.Sprintf("git %s: exit status %d", strings.Join(e.args, " "), e.code)
	if e.stderr != "" {
		msg += ": " + e.stderr
	}
	return msg
}

// exitCode returns the exit code of a failed git command, or -1.
func exitCode(err error) int {
	var ge *gitError
	if errors.As(err, &ge) {
		return ge.code
	}
	return -1
}

// repoEnvVars point git at another repository than the one we name; an
// inherited value (banger run from a git hook, say) would mislead every
// command here.
var repoEnvVars = []string{
	"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
	"GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE",
	"GIT_PREFIX", "GIT_QUARANTINE_PATH", "GIT_SHALLOW_FILE",
}

func gitEnv() []string {
	env := make([]string, 0, len(os.Environ())+4)
outer:
	for _, kv := range os.Environ() {
		for _, v := range repoEnvVars {
			if strings.HasPrefix(kv, v+"=") {
				continue outer
			}
		}
		env = append(env, kv)
	}
	// Read-only inspection must not rewrite the user's index (git status
	// refreshes it otherwise), nor ever prompt.
	return append(env, "GIT_OPTIONAL_LOCKS=0", "GIT_TERMINAL_PROMPT=0", "LC_ALL=C", "LANGUAGE=C")
}

// hostGit runs git -C dir args... on the host and returns its stdout.
func hostGit(ctx context.Context, dir string, stdin io.Reader, args ...string) ([]byte, error) {
	var out bytes.Buffer
	err := hostGitTo(ctx, dir, stdin, &out, args...)
	return out.Bytes(), err
}

func hostGitTo(ctx context.Context, dir string, stdin io.Reader, stdout io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	cmd.Env = gitEnv()
	cmd.Stdin, cmd.Stdout = stdin, stdout
	errb := &capBuffer{max: 4096}
	cmd.Stderr = errb
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &gitError{args: args, code: ee.ExitCode(), stderr: errb.String()}
	}
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("git is not installed on this host (needed to copy a git work tree): %w", err)
	}
	return err
}

// gitLine runs git and returns its output's first line, trimmed.
func gitLine(ctx context.Context, dir string, args ...string) (string, error) {
	out, err := hostGit(ctx, dir, nil, args...)
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), err
}

// gitOptional runs git and returns "" (no error) when it exits 1, the usual
// "not set / not found" status of config, symbolic-ref and rev-parse -q.
func gitOptional(ctx context.Context, dir string, args ...string) (string, error) {
	s, err := gitLine(ctx, dir, args...)
	if err != nil && exitCode(err) == 1 {
		return "", nil
	}
	return s, err
}

// splitZ splits NUL-terminated records.
func splitZ(b []byte) []string {
	s := strings.TrimSuffix(string(b), "\x00")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}
