package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/rpc"
	"banger/internal/sysinstall"
)

// systemCmd is `banger system install|status|uninstall`: banger as a system
// service whose daemon runs as an ordinary user (see internal/sysinstall).
func (a *app) systemCmd() *cobra.Command {
	c := &cobra.Command{Use: "system", Short: "Install banger as a system service (daemon as a user, root helper as root)"}
	var o sysinstall.Options
	needRoot := func() error {
		if (o.Root == "" || o.Root == "/") && os.Geteuid() != 0 {
			return fmt.Errorf("writing to the system needs root: run it with sudo (or give --root DIR to stage an install)")
		}
		return nil
	}
	install := &cobra.Command{
		Use:   "install --owner USER",
		Short: "Install the binaries, the root helper's policy and the systemd units; enable them when systemd runs",
		Long: "Copy banger, bangerd, bangerd-root and banger-agent (from the directory of this banger) to the bin\n" +
			"directory, write the root helper's policy (/etc/banger/root-helper.json: owner, managed directories,\n" +
			"network from /etc/banger/config.toml, VMM binaries), the units bangerd-root.service (root, bounded\n" +
			"capabilities) and bangerd.service (User=USER, KillMode=process so VMs outlive restarts), and\n" +
			"/etc/banger/install.json listing all of it. Files that exist and were not installed by banger are\n" +
			"never overwritten. When systemd runs, the units are enabled and started.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needRoot(); err != nil {
				return err
			}
			o.Out = a.stderr
			m, err := sysinstall.Install(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "installed for %s (uid %d); daemon socket %s, helper socket %s\n", m.Owner, m.OwnerUID, m.DaemonSocket, m.HelperSocket)
			return nil
		},
	}
	install.Flags().StringVar(&o.Owner, "owner", "", "the user the daemon runs as (required)")
	install.Flags().StringVar(&o.BinDir, "bin-dir", sysinstall.DefaultBinDir, "where the binaries are installed")
	install.Flags().StringVar(&o.SourceDir, "from", "", "directory holding the built binaries (default: this banger's directory)")

	status := &cobra.Command{
		Use: "status", Short: "Show what is installed, whether it is intact, the services' state and the helper's reachability",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := sysinstall.GetStatus(cmd.Context(), o)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(st)
			}
			w := newTable(a.stdout)
			if !st.Installed {
				w.row("installed", "no (`sudo banger system install --owner USER`)")
				return w.flush()
			}
			m := st.Meta
			w.row("installed", fmt.Sprintf("yes, version %s at %s", m.Version, m.InstalledAt.Format("2006-01-02 15:04:05Z")))
			w.row("owner", fmt.Sprintf("%s (uid %d)", m.Owner, m.OwnerUID))
			w.row("daemon socket", m.DaemonSocket)
			w.row("helper socket", m.HelperSocket)
			w.row("helper", st.Helper)
			w.row("systemd", map[bool]string{true: "running", false: "not running: units not managed"}[st.Systemd])
			for _, u := range m.Units {
				w.row(u, st.Units[u])
			}
			var files []string
			for f := range st.Files {
				files = append(files, f)
			}
			sort.Strings(files)
			for _, f := range files {
				w.row(f, st.Files[f])
			}
			return w.flush()
		},
	}
	uninstall := &cobra.Command{
		Use: "uninstall [--purge]", Short: "Disable the units and remove exactly what install wrote (--purge: also the state)",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needRoot(); err != nil {
				return err
			}
			if err := a.cleanupInstalledDaemon(cmd.Context(), o.Root); err != nil {
				return err
			}
			r, err := sysinstall.Uninstall(cmd.Context(), o)
			for _, p := range r.Removed {
				fmt.Fprintln(a.stderr, "removed", p)
			}
			for _, p := range r.Purged {
				fmt.Fprintln(a.stderr, "purged", p)
			}
			if len(r.Kept) > 0 {
				fmt.Fprintln(a.stderr, "left in place: "+strings.Join(r.Kept, ", "))
			}
			return err
		},
	}
	uninstall.Flags().BoolVar(&o.Purge, "purge", false, "also remove banger's state, cache and runtime directories")
	c.PersistentFlags().StringVar(&o.Root, "root", "/", "install below this directory (a staging prefix) instead of /")
	c.AddCommand(install, a.addJSON(status), uninstall)
	return c
}

// cleanupInstalledDaemon asks the installed daemon, when it answers, to stop
// and remove what it keeps on the host between VMs (pool taps, nftables
// tables, the bridge: `daemon stop --cleanup`) before its files go. With a VM
// running it refuses, and so does the uninstall. A daemon that does not
// answer has nothing to hand back; its leftovers, if any, are named.
func (a *app) cleanupInstalledDaemon(ctx context.Context, root string) error {
	m, err := sysinstall.ReadMetadata(root)
	if err != nil {
		return nil // Uninstall reports a missing install
	}
	sock := filepath.Join(root, m.DaemonSocket)
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	cl, err := rpc.Dial(dctx, sock)
	cancel()
	if err != nil {
		fmt.Fprintf(a.stderr, "the daemon does not answer on %s; its pool taps, bridge and nftables tables, if any, stay (bgtap-pool*, %s)\n", sock, "inet/bridge banger")
		return nil
	}
	defer cl.Close()
	if err := cl.Call(ctx, api.MethodDaemonStop, api.DaemonStopParams{Cleanup: true}, nil); err != nil {
		return fmt.Errorf("uninstall refused: the daemon cannot clean up: %w", err)
	}
	fmt.Fprintln(a.stderr, "stopped the daemon and removed its pool taps, bridge and nftables tables")
	return nil
}
