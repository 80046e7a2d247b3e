package cli

import (
	"encoding/json"
	"fmt"

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
			code, err := a.sshSession(cmd.Context(), args[0], sessionOpts{command: args[1:], tty: len(args) == 1, stdin: true})
			if err != nil {
				return err
			}
			if code != 0 {
				return ExitError{code}
			}
			return nil
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
