package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

func (a *app) daemonCmd() *cobra.Command {
	c := &cobra.Command{Use: "daemon", Short: "Inspect or stop the banger daemon"}
	status := &cobra.Command{
		Use: "status", Short: "Show whether the daemon runs, and its VMM, accelerator and disk backend",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, l, err := a.connectExisting(cmd.Context())
			if err != nil {
				return fmt.Errorf("the daemon is not running (no answer on %s); any banger command starts it", l.Socket())
			}
			defer cl.Close()
			var st api.DaemonStatus
			if err := cl.Call(cmd.Context(), api.MethodDaemonStatus, nil, &st); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(st)
			}
			w := newTable(a.stdout)
			w.row("running", fmt.Sprintf("yes (pid %d, version %s)", st.PID, st.Version))
			w.row("socket", st.Socket)
			w.row("state", st.StateDir)
			w.row("vmm", st.VMM+" — "+st.VMMReason)
			w.row("accel", st.Accel+" — "+st.AccelReason)
			w.row("disk", st.DiskBackend+" — "+st.DiskBackendReason)
			w.row("dns", st.DNS)
			w.row("tap pool", st.TapPool)
			w.row("vms", fmt.Sprintf("%d running, %d total", st.VMsRunning, st.VMsTotal))
			return w.flush()
		},
	}
	var cleanup bool
	stop := &cobra.Command{
		Use: "stop [--cleanup]", Short: "Stop the daemon (running VMs keep running)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, _, err := a.connectExisting(cmd.Context())
			if err != nil {
				fmt.Fprintln(a.stderr, "the daemon is not running")
				return nil
			}
			defer cl.Close()
			if err := cl.Call(cmd.Context(), api.MethodDaemonStop, api.DaemonStopParams{Cleanup: cleanup}, nil); err != nil {
				return err
			}
			if cleanup {
				fmt.Fprintln(a.stderr, "daemon stopping; its firewall tables and bridge are removed")
			} else {
				fmt.Fprintln(a.stderr, "daemon stopping; running VMs keep running")
			}
			return nil
		},
	}
	stop.Flags().BoolVar(&cleanup, "cleanup", false, "also remove banger's nftables tables and bridge (no VM may be running)")
	c.AddCommand(a.addJSON(status), stop)
	return c
}
