package cli

import (
	"strconv"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

func (a *app) vmPortsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "ports [NAME...]",
		Short: "List the ports guests listen on, as NAME.vm:PORT endpoints (every running VM by default)",
		RunE: func(cmd *cobra.Command, args []string) error {
			var ports []api.VMPort
			if err := a.call(cmd.Context(), api.MethodVMPorts, api.VMPortsParams{Names: args}, &ports); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(ports)
			}
			t := newTable(a.stdout)
			t.row("VM", "ENDPOINT", "PROTO", "PROCESS", "URL")
			for _, p := range ports {
				endpoint, url := p.Endpoint, p.URL
				if !p.Reachable {
					endpoint = p.Address + ":" + itoa(p.Port) + " (guest only)"
				}
				if url == "" {
					url = "-"
				}
				t.row(p.VM, endpoint, p.Proto, dash(p.Process), url)
			}
			return t.flush()
		},
	}
	return a.addJSON(c)
}

func itoa(n int) string { return strconv.Itoa(n) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
