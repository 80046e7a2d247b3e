// Package cli implements the banger command line: flag parsing with cobra and
// rendering of results; every behaviour lives in the daemon, reached through
// the JSON-RPC client. One file per command group:
//
//	root.go      root command, daemon connection and auto-start, errors
//	daemon.go    banger daemon status|stop
//	image.go     banger image register|list|show|delete
//	kernel.go    banger kernel list|show|pull|import|rm
//	vm.go        banger vm create|start|stop|restart|kill|delete|list|show|set|prune
//	vmio.go      banger vm logs|ssh
//	progress.go  stage progress: live on a TTY, plain lines otherwise
//	system.go    banger system install|status|uninstall (internal/sysinstall)
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/paths"
	"banger/internal/rpc"
)

// ExitError carries a process exit code (e.g. a guest command's).
type ExitError struct{ Code int }

func (e ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Main runs the CLI and returns the process exit code.
func Main(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	fmt.Fprintln(os.Stderr, "banger:", err)
	return 1
}

type app struct {
	stdout, stderr io.Writer
	json           bool
}

func newRoot() *cobra.Command {
	a := &app{stdout: os.Stdout, stderr: os.Stderr}
	root := &cobra.Command{
		Use:           "banger",
		Short:         "One-command development sandboxes on microVMs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(a.daemonCmd(), a.imageCmd(), a.kernelCmd(), a.vmCmd(), a.psCmd(), a.sshConfigCmd(), a.doctorCmd(), a.systemCmd(), &cobra.Command{
		Use: "version", Short: "Print the CLI version",
		Run: func(*cobra.Command, []string) { fmt.Fprintln(a.stdout, "banger", api.Version) },
	})
	return root
}

// addJSON adds --json to a read command.
func (a *app) addJSON(c *cobra.Command) *cobra.Command {
	c.Flags().BoolVar(&a.json, "json", false, "print the result as JSON")
	return c
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// connect dials the daemon, starting it first when none answers (user mode).
func (a *app) connect(ctx context.Context) (*rpc.Client, error) {
	l, err := paths.Resolve(false)
	if err != nil {
		return nil, err
	}
	c, err := rpc.Dial(ctx, l.Socket())
	if err == nil {
		return c, nil
	}
	if l.System {
		return nil, fmt.Errorf("the banger system service is not running (%v); start it with `systemctl start bangerd`", err)
	}
	if err := a.startDaemon(ctx, l); err != nil {
		return nil, err
	}
	return rpc.Dial(ctx, l.Socket())
}

// connectExisting dials the daemon without starting one.
func (a *app) connectExisting(ctx context.Context) (*rpc.Client, paths.Layout, error) {
	l, err := paths.Resolve(false)
	if err != nil {
		return nil, l, err
	}
	c, err := rpc.Dial(ctx, l.Socket())
	return c, l, err
}

func bangerdPath() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "bangerd")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("bangerd")
	if err != nil {
		return "", errors.New("bangerd not found next to banger or in PATH; install both binaries")
	}
	return p, nil
}

func (a *app) startDaemon(ctx context.Context, l paths.Layout) error {
	bin, err := bangerdPath()
	if err != nil {
		return err
	}
	if err := l.Ensure(); err != nil {
		return err
	}
	logf, err := os.OpenFile(l.DaemonLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := rpc.Dial(ctx, l.Socket()); err == nil {
			c.Close()
			fmt.Fprintf(a.stderr, "banger: started the daemon (pid %d; log %s)\n", cmd.Process.Pid, l.DaemonLog())
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("the daemon exited at start (%v): %s", err, lastDaemonError(l.DaemonLog()))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // poll for the daemon's socket
		}
	}
	return fmt.Errorf("the daemon did not answer within 30s; see %s", l.DaemonLog())
}

// call connects, calls method and closes.
func (a *app) call(ctx context.Context, method string, params, result any) error {
	c, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Call(ctx, method, params, result)
}

// callStream is call for methods that stream events to onEvent.
func (a *app) callStream(ctx context.Context, method string, params, result any, onEvent func(string, json.RawMessage)) error {
	c, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.CallStream(ctx, method, params, result, onEvent)
}

// lastDaemonError returns bangerd's last "bangerd: ..." line from its log.
func lastDaemonError(logPath string) string {
	b, _ := os.ReadFile(logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if msg, ok := strings.CutPrefix(lines[i], "bangerd: "); ok {
			return msg
		}
	}
	return "see " + logPath
}
