package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/paths"
	"banger/internal/sshconfig"
)

func (a *app) sshConfigCmd() *cobra.Command {
	var install, uninstall bool
	c := &cobra.Command{
		Use:   "ssh-config [--install | --uninstall]",
		Short: "Let the system ssh reach VMs as NAME.vm (prints the config without a flag)",
		Long: "Without a flag, print the ssh client config for banger's VMs.\n" +
			"--install puts a marker-fenced Include of it at the top of ~/.ssh/config, so `ssh NAME.vm` works;\n" +
			"--uninstall removes it again, leaving ~/.ssh/config exactly as it was. Your known_hosts is never touched.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if install && uninstall {
				return errors.New("--install and --uninstall cannot be combined")
			}
			l, err := paths.Resolve(false)
			if err != nil {
				return err
			}
			include := filepath.Join(l.ConfigDir, "ssh_config")
			home, err := os.UserHomeDir()
			if err != nil {
				return err
			}
			userConfig := filepath.Join(home, ".ssh", "config")
			if uninstall {
				changed, err := sshconfig.Uninstall(userConfig, include)
				if err == nil {
					fmt.Fprintln(a.stderr, pick(changed, "removed banger's Include from "+userConfig, "banger's Include was not in "+userConfig))
				}
				return err
			}
			content, err := a.renderSSHConfig(cmd.Context())
			if err != nil {
				return err
			}
			if !install {
				_, err := io.WriteString(a.stdout, content)
				return err
			}
			changed, err := sshconfig.Install(userConfig, include, content)
			if err == nil {
				fmt.Fprintln(a.stderr, pick(changed, "added", "already had")+" banger's Include in "+userConfig+"; `ssh NAME.vm` now reaches running VMs")
			}
			return err
		},
	}
	c.Flags().BoolVar(&install, "install", false, "add banger's Include to ~/.ssh/config (idempotent)")
	c.Flags().BoolVar(&uninstall, "uninstall", false, "remove it, restoring ~/.ssh/config byte for byte")
	return c
}

func pick(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

func (a *app) renderSSHConfig(ctx context.Context) (string, error) {
	var st api.DaemonStatus
	if err := a.call(ctx, api.MethodDaemonStatus, nil, &st); err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return "", err
	}
	return sshconfig.Render(sshconfig.Files{Banger: self, KeyFile: st.SSHKey, KnownHosts: st.KnownHosts}), nil
}

// vmSSHProxyCmd is ssh's ProxyCommand for NAME.vm: it connects stdin and
// stdout to the guest's SSH port, wherever the VM's address is.
func (a *app) vmSSHProxyCmd() *cobra.Command {
	return &cobra.Command{
		Use: "ssh-proxy NAME[.vm]", Hidden: true, Args: cobra.ExactArgs(1),
		Short: "Connect stdin/stdout to a VM's SSH port (ProxyCommand for ssh NAME.vm)",
		RunE: func(cmd *cobra.Command, args []string) error {
			name := strings.TrimSuffix(args[0], ".vm")
			var info api.SSHInfo
			if err := a.call(cmd.Context(), api.MethodVMSSHInfo, api.VMRef{Name: name}, &info); err != nil {
				return err
			}
			conn, err := net.DialTimeout("tcp", net.JoinHostPort(info.Host, "22"), 10*time.Second)
			if err != nil {
				return fmt.Errorf("vm %s: %w", name, err)
			}
			defer conn.Close()
			go func() {
				io.Copy(conn, os.Stdin)
				conn.(*net.TCPConn).CloseWrite()
			}()
			_, err = io.Copy(os.Stdout, conn)
			return err
		},
	}
}
