package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"banger/internal/api"
	"banger/internal/guest"
)

// runOpts are `vm run`'s own flags (the create flags live in api.VMCreateParams).
type runOpts struct {
	rm        bool
	detach    bool
	workspace string // host path to copy in ("" for none)
	ws        api.WorkspacePrepareParams
}

func (a *app) vmRunCmd() *cobra.Command {
	var p api.VMCreateParams
	var o runOpts
	var vcpu int
	c := &cobra.Command{
		Use:   "run [PATH] [flags] [-- COMMAND ARGS...]",
		Short: "Create a fresh VM and open a shell in it, or run a command there and exit with its status",
		Long: `Create a fresh VM and open a shell in it, or run COMMAND ARGS... there.

  banger vm run                      a shell in a new VM
  banger vm run -- make test         run a command; banger exits with its status
  banger vm run --rm -- sh -c 'exit 3'
  banger vm run ./repo -- make test  copy a git work tree in first, run there

Arguments after -- reach the guest exactly as given (no re-splitting).
A VM whose guest never becomes ready is kept (even with --rm) so that
` + "`banger vm logs NAME`" + ` can show why.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			command := []string(nil)
			if at := cmd.ArgsLenAtDash(); at >= 0 {
				args, command = args[:at], args[at:]
				if len(command) == 0 {
					return errors.New("nothing after --: give a command to run, or leave out -- for a shell")
				}
			}
			if len(args) > 1 {
				return fmt.Errorf("one workspace PATH at most (got %q); put the command after --", args)
			}
			if len(args) == 1 {
				o.workspace = args[0]
			}
			if o.rm && o.detach {
				return errors.New("--rm and --detach cannot be combined: a detached VM outlives this command")
			}
			if cmd.Flags().Changed("vcpu") {
				p.VCPU = &vcpu
			}
			return a.run(cmd.Context(), p, o, command)
		},
	}
	createFlags(c, &p, &vcpu)
	f := c.Flags()
	f.BoolVar(&o.rm, "rm", false, "delete the VM when the shell or command ends")
	f.BoolVarP(&o.detach, "detach", "d", false, "prepare the VM and return without a shell or command")
	a.workspaceFlags(c, &o.ws)
	return c
}

// run creates the VM, then hands the terminal to a shell or command in it.
func (a *app) run(ctx context.Context, p api.VMCreateParams, o runOpts, command []string) error {
	p.KeepFailed = true
	v, err := a.create(ctx, p)
	if err != nil {
		return err
	}
	dir := ""
	if o.workspace != "" {
		o.ws.Name = v.Name
		res, err := a.prepareWorkspace(ctx, o.ws, o.workspace)
		if err != nil {
			if !o.rm {
				fmt.Fprintf(a.stderr, "vm %s is running without its workspace; remove it with `banger vm delete --force %s`\n", v.Name, v.Name)
			} else if derr := a.deleteQuietly(v.Name); derr != nil {
				fmt.Fprintf(a.stderr, "banger: could not remove vm %s: %v\n", v.Name, derr)
			}
			return err
		}
		dir = workDir(res.Workspace)
	}
	if o.detach {
		fmt.Fprintln(a.stdout, v.Name)
		fmt.Fprintf(a.stderr, "vm %s is running at %s; reach it with `banger vm ssh %s`\n", v.Name, v.IP, v.Name)
		return nil
	}
	code, err := a.sshSession(ctx, v.Name, sessionOpts{command: command, tty: len(command) == 0 || a.stdinIsTTY(), stdin: true, dir: dir})
	if o.rm {
		if derr := a.deleteQuietly(v.Name); derr != nil {
			fmt.Fprintf(a.stderr, "banger: could not remove vm %s: %v\n", v.Name, derr)
			if err == nil {
				err = derr
			}
		}
	} else if len(command) == 0 {
		fmt.Fprintf(a.stderr, "vm %s is still running; stop it with `banger vm stop %s` or remove it with `banger vm delete --force %s`\n",
			v.Name, v.Name, v.Name)
	}
	if err != nil {
		return err
	}
	if code != 0 {
		return ExitError{code}
	}
	return nil
}

// deleteQuietly force-deletes a VM on a fresh context: it must happen even
// when the command was interrupted.
func (a *app) deleteQuietly(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return a.call(ctx, api.MethodVMDelete, api.VMDeleteParams{Name: name, Force: true}, nil)
}

func (a *app) vmExecCmd() *cobra.Command {
	var interactive, tty bool
	c := &cobra.Command{
		Use:   "exec NAME [-i] [-t] [--] COMMAND ARGS...",
		Short: "Run a command in a running VM and exit with its status",
		Long: "Run COMMAND ARGS... in a running VM, like `docker exec`: -i attaches stdin, -t allocates a terminal.\n" +
			"It runs in the VM's workspace directory when it has one.\n" +
			"Arguments reach the guest exactly as given (no re-splitting).",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[1] == "--" { // flags stop at NAME, so a "--" after it is still ours
				args = append(args[:1], args[2:]...)
				if len(args) < 2 {
					return errors.New("nothing after --: give a command to run")
				}
			}
			var v api.VM
			if err := a.call(cmd.Context(), api.MethodVMShow, api.VMRef{Name: args[0]}, &v); err != nil {
				return err
			}
			var code int
			var err error
			if v.Agent && !interactive && !tty {
				code, err = a.agentExec(cmd.Context(), api.VMExecParams{Name: args[0], Argv: args[1:]})
			} else {
				dir := ""
				if v.Workspace != nil {
					dir = workDir(*v.Workspace)
				}
				code, err = a.sshSession(cmd.Context(), args[0], sessionOpts{command: args[1:], tty: tty, stdin: interactive, dir: dir})
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return ExitError{code}
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&interactive, "interactive", "i", false, "keep stdin attached")
	c.Flags().BoolVarP(&tty, "tty", "t", false, "allocate a terminal")
	c.Flags().SetInterspersed(false) // flags after NAME belong to the command
	return c
}

type sessionOpts struct {
	command []string // empty: a login shell
	tty     bool     // allocate a terminal in the guest
	stdin   bool     // attach stdin (otherwise the guest reads /dev/null)
	dir     string   // guest working directory ("" for root's home)
}

// workDir is where commands of a workspace VM start: the copied path.
func workDir(ws api.Workspace) string {
	if ws.Subdir == "" {
		return ws.Dest
	}
	return ws.Dest + "/" + ws.Subdir
}

// remoteArgv is the guest argv of a session: the command or a login shell,
// started in dir when one is set.
func remoteArgv(o sessionOpts) []string {
	switch {
	case o.dir == "":
		return o.command
	case len(o.command) == 0:
		return []string{"sh", "-c", `cd "$1" && exec "${SHELL:-/bin/sh}" -l`, "sh", o.dir}
	default:
		return append([]string{"sh", "-c", `cd "$1" && shift && exec "$@"`, "sh", o.dir}, o.command...)
	}
}

// sshSession runs the system ssh as a child (so banger can act afterwards,
// e.g. for --rm) and returns the guest's exit status. While it runs, Ctrl-C
// belongs to the guest: banger ignores SIGINT and lets ssh forward it.
func (a *app) sshSession(ctx context.Context, name string, o sessionOpts) (int, error) {
	var info api.SSHInfo
	if err := a.call(ctx, api.MethodVMSSHInfo, api.VMRef{Name: name}, &info); err != nil {
		return 0, err
	}
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		return 0, fmt.Errorf("ssh not found: install the openssh-client package")
	}
	var argv []string
	switch {
	case o.tty && a.stdinIsTTY():
		argv = append(argv, "-t")
	case o.tty:
		argv = append(argv, "-tt") // asked for a terminal without one here, like docker exec -t
	default:
		argv = append(argv, "-T")
	}
	if !o.stdin {
		argv = append(argv, "-n")
	}
	argv = append(argv, sshArgs(info)...)
	if remote := remoteArgv(o); len(remote) > 0 {
		argv = append(argv, "--", guest.ShellJoin(remote))
	}
	cmd := exec.Command(sshBin, argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, a.stdout, a.stderr
	signal.Ignore(os.Interrupt, syscall.SIGQUIT)
	defer signal.Reset(os.Interrupt, syscall.SIGQUIT)
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee) && ee.ExitCode() == 255:
		// ssh's own failure (or the guest command's 255): ask the daemon,
		// which names the cause (unreachable, changed host key).
		if cerr := a.call(ctx, api.MethodVMSSHCheck, api.VMRef{Name: name}, nil); cerr != nil {
			return 0, cerr
		}
		return 255, nil
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode(), nil
	default:
		return 0, fmt.Errorf("ssh: %w", err)
	}
}

// agentExec runs a command through the guest agent (no stdin, no
// terminal), printing its output as it comes; Ctrl-C kills it in the guest.
func (a *app) agentExec(ctx context.Context, p api.VMExecParams) (int, error) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	var res api.VMExecResult
	err := a.callStream(ctx, api.MethodVMExec, p, &res, func(event string, data json.RawMessage) {
		var o api.Output
		if event != api.EventOutput || json.Unmarshal(data, &o) != nil {
			return
		}
		if o.Stream == "stderr" {
			a.stderr.Write(o.Data)
		} else {
			a.stdout.Write(o.Data)
		}
	})
	if err != nil && ctx.Err() != nil {
		return 130, nil
	}
	return res.ExitCode, err
}

func (a *app) stdinIsTTY() bool { return term.IsTerminal(int(os.Stdin.Fd())) }
