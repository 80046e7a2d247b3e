package oci

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// ErrMissingTool is wrapped when an e2fsprogs tool cannot be found.
var ErrMissingTool = errors.New("tool not found")

// tool finds an e2fsprogs binary in PATH or, because an ordinary user's
// PATH on Debian lacks them, in /usr/sbin and /sbin.
func tool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w in PATH, /usr/sbin or /sbin (install e2fsprogs)", name, ErrMissingTool)
}

// run executes a tool and returns its stdout; a failure names the command
// and carries its stderr.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	bin, err := tool(name)
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), cmdError(name, args, err, stderr.String()+stdout.String())
	}
	return stdout.Bytes(), nil
}

func cmdError(name string, args []string, err error, output string) error {
	msg := strings.TrimSpace(output)
	if len(msg) > 4000 {
		msg = msg[:4000] + "..."
	}
	if msg == "" {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
}

// debugfs exits 0 even when a command fails, so stderr is the only error
// signal: every line but the version banner is an error.
var debugfsBanner = regexp.MustCompile(`^debugfs \d+\.\d+`)

// debugfs runs a debugfs command script against img (read-write when
// write is set). Its stdout (the commands echoed and their output) goes to
// stdout, which may be nil.
func debugfs(ctx context.Context, img, script string, write bool, stdout *bytes.Buffer) error {
	bin, err := tool("debugfs")
	if err != nil {
		return err
	}
	args := []string{"-f", script, img}
	if write {
		args = append([]string{"-w"}, args...)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__")
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.Stderr = &stderr
	err = cmd.Run()
	var bad []string
	for _, line := range strings.Split(stderr.String(), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !debugfsBanner.MatchString(line) {
			bad = append(bad, line)
		}
	}
	if err == nil && len(bad) > 0 {
		err = errors.New("reported errors")
	}
	if err != nil {
		return cmdError("debugfs", args, err, strings.Join(bad, "\n"))
	}
	return nil
}

// dq quotes a debugfs argument: its parser (libss) takes everything
// between double quotes literally, a doubled quote standing for one.
// Newlines cannot be quoted (scripts are read line by line).
func dq(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
