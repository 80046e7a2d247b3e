package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

func (a *app) vmLogsCmd() *cobra.Command {
	var p api.VMLogsParams
	c := &cobra.Command{
		Use: "logs NAME [-f] [--tail BYTES]", Short: "Print a VM's serial console", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			cl, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer cl.Close()
			var chunk api.LogChunk
			err = cl.CallStream(cmd.Context(), api.MethodVMLogs, p, &chunk, func(event string, data json.RawMessage) {
				var c api.LogChunk
				if event == api.EventLog && json.Unmarshal(data, &c) == nil {
					fmt.Fprint(a.stdout, c.Data)
				}
			})
			if cmd.Context().Err() != nil {
				return nil
			}
			fmt.Fprint(a.stdout, chunk.Data)
			return err
		},
	}
	c.Flags().BoolVarP(&p.Follow, "follow", "f", false, "keep printing new output")
	c.Flags().Int64Var(&p.Tail, "tail", 0, "print only the last BYTES bytes first")
	return c
}

func (a *app) vmSSHCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh NAME [-- COMMAND ARGS...]",
		Short: "Open a shell in a VM, or run a command there and exit with its status",
		Long: "Open a shell in a VM, or run COMMAND ARGS... there and exit with its status.\n" +
			"Arguments reach the guest exactly as given (no re-splitting); use `sh -c '...'` for shell syntax.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.SSHInfo
			if err := a.call(cmd.Context(), api.MethodVMSSHInfo, api.VMRef{Name: args[0]}, &info); err != nil {
				return err
			}
			sshBin, err := exec.LookPath("ssh")
			if err != nil {
				return fmt.Errorf("ssh not found: install the openssh-client package")
			}
			argv := append([]string{"ssh"}, sshArgs(info)...)
			if len(args) > 1 {
				// ssh joins its arguments into one string for the remote
				// shell; quote each so the guest sees exactly these argv.
				argv = append(argv, "--", shellJoin(args[1:]))
			}
			// Replace this process: the exit status and the terminal are ssh's.
			return syscall.Exec(sshBin, argv, os.Environ())
		},
	}
}

// sshArgs are the system ssh options that use banger's key and its pinned
// host key (the user's own known_hosts is never touched).
func sshArgs(i api.SSHInfo) []string {
	return []string{
		"-i", i.KeyFile,
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + i.KnownHosts,
		"-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=" + i.HostKeyAlias,
		"-o", "LogLevel=ERROR",
		"-o", "ConnectTimeout=10",
		i.User + "@" + i.Host,
	}
}

// shellJoin quotes each argument for a POSIX shell and joins them.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if i > 0 && a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
