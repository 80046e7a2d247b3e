package cli

import (
	"fmt"
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
					endpoint = p.Address + ":" + strconv.Itoa(p.Port) + " (guest only)"
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

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) vmPortCmd() *cobra.Command {
	c := &cobra.Command{Use: "port", Short: "Publish guest ports on the host ([hostip:]hostport:guestport[/tcp|udp])"}
	change := func(verb string, short string) *cobra.Command {
		return &cobra.Command{
			Use: verb + " NAME SPEC...", Short: short, Args: cobra.MinimumNArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				p := api.VMNetworkParams{Name: args[0]}
				if verb == "add" {
					p.AddPublish = args[1:]
				} else {
					p.RemovePublish = args[1:]
				}
				return a.call(cmd.Context(), api.MethodVMNetwork, p, nil)
			},
		}
	}
	list := &cobra.Command{
		Use: "list NAME", Short: "List a VM's published ports", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v api.VM
			if err := a.call(cmd.Context(), api.MethodVMShow, api.VMRef{Name: args[0]}, &v); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(append([]string{}, v.Publish...))
			}
			for _, spec := range v.Publish {
				fmt.Fprintln(a.stdout, spec)
			}
			return nil
		},
	}
	c.AddCommand(change("add", "Publish guest ports (a running VM's at once)"),
		change("rm", "Stop publishing guest ports"), a.addJSON(list))
	return c
}
