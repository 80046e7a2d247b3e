package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/rpc"
)

func (a *app) vmCmd() *cobra.Command {
	c := &cobra.Command{Use: "vm", Short: "Create and manage microVMs"}
	c.AddCommand(a.vmCreateCmd(), a.vmStartCmd("start"), a.vmStartCmd("restart"), a.vmStopCmd(), a.vmKillCmd(),
		a.vmDeleteCmd(), a.vmListCmd("list"), a.vmShowCmd(), a.vmSetCmd(), a.vmPruneCmd(), a.vmLogsCmd(), a.vmSSHCmd(),
		a.vmRunCmd(), a.vmExecCmd(), a.vmSSHProxyCmd(), a.vmWorkspaceCmd(), a.vmPortsCmd(), a.vmPortCmd())
	return c
}

func (a *app) psCmd() *cobra.Command {
	c := a.vmListCmd("ps")
	c.Short = "List VMs (same as `banger vm list`)"
	return c
}

func (a *app) vmCreateCmd() *cobra.Command {
	var p api.VMCreateParams
	var vcpu int
	c := &cobra.Command{
		Use:   "create [--name NAME] [--image IMAGE] [--vcpu N] [--memory SIZE] [--disk-size SIZE] [--work-size SIZE] [--no-start]",
		Short: "Create a VM and boot it (Ctrl-C cancels and removes everything it made)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("vcpu") {
				p.VCPU = &vcpu
			}
			v, err := a.create(cmd.Context(), p)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(v)
			}
			fmt.Fprintln(a.stdout, v.Name)
			if v.State == api.StateRunning {
				fmt.Fprintf(a.stderr, "vm %s is running at %s; reach it with `banger vm ssh %s`\n", v.Name, v.IP, v.Name)
			}
			return nil
		},
	}
	createFlags(c, &p, &vcpu)
	f := c.Flags()
	f.BoolVar(&p.NoStart, "no-start", false, "prepare the disks but do not boot")
	return a.addJSON(c)
}

// createFlags are the flags vm create and vm run share; vcpu is copied into
// p.VCPU only when given (nil takes the config default).
func createFlags(c *cobra.Command, p *api.VMCreateParams, vcpu *int) {
	f := c.Flags()
	f.StringVar(&p.Name, "name", "", "VM name (a DNS label; generated when omitted)")
	f.StringVar(&p.Image, "image", "", "image to boot (default: the image named \"default\")")
	f.IntVar(vcpu, "vcpu", 0, "virtual CPUs (default from config, 2)")
	f.StringVar(&p.Memory, "memory", "", "memory, e.g. 1GiB or 512M (default from config)")
	f.StringVar(&p.DiskSize, "disk-size", "", "root disk size (grows the image's virtual size)")
	f.StringVar(&p.WorkSize, "work-size", "", "size of the /root work disk (default from config, 4GiB)")
	f.BoolVar(&p.NAT, "nat", false, "let the guest reach the outside through the host (masquerade)")
	f.StringArrayVarP(&p.Publish, "publish", "p", nil, "publish a guest port: [hostip:]hostport:guestport[/tcp|udp] (repeatable)")
}

// create begins the asynchronous create, draws its stages, and cancels it
// (rolling everything back) on Ctrl-C.
func (a *app) create(ctx context.Context, p api.VMCreateParams) (api.VM, error) {
	cl, err := a.connect(ctx)
	if err != nil {
		return api.VM{}, err
	}
	defer cl.Close()
	if p.Image == "" {
		if err := a.ensureDefaultImage(ctx, cl); err != nil {
			return api.VM{}, err
		}
	}
	var op api.Op
	if err := cl.Call(ctx, api.MethodVMCreate, p, &op); err != nil {
		return api.VM{}, err
	}
	fmt.Fprintf(a.stderr, "creating vm %s\n", op.VM)
	if _, err := a.follow(ctx, cl, op, "create of "+op.VM); err != nil {
		return api.VM{}, err
	}
	var v api.VM
	err = cl.Call(ctx, api.MethodVMShow, api.VMRef{Name: op.VM}, &v)
	return v, err
}

// ensureDefaultImage pulls the default image on first use: the catalog
// bundle of api.DefaultImageSource, or its recipe built from the host's
// Debian packages, with its kernel. Later creates find it at once.
func (a *app) ensureDefaultImage(ctx context.Context, cl *rpc.Client) error {
	err := cl.Call(ctx, api.MethodImageShow, api.ImageRef{Name: api.DefaultImage}, nil)
	if rpc.CodeOf(err) != rpc.CodeNotFound {
		return err
	}
	fmt.Fprintf(a.stderr, "no default image yet: getting %s and its kernel (first use only; later VMs start at once)\n", api.DefaultImageSource)
	_, err = a.pullImage(ctx, cl, api.ImagePullParams{Ref: api.DefaultImageSource, Name: api.DefaultImage})
	return err
}

// follow draws an asynchronous operation's stages until it ends and cancels
// it (it rolls back) on Ctrl-C. It returns the final Op, and an error unless
// the operation succeeded; what names it in messages ("create of NAME").
func (a *app) follow(ctx context.Context, cl *rpc.Client, op api.Op, what string) (api.Op, error) {
	sigCtx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	prog := newProgress(a.stderr)
	onEvent := func(event string, data json.RawMessage) {
		var st api.Stage
		if event == api.EventStage && json.Unmarshal(data, &st) == nil {
			prog.stage(st)
		}
	}
	err := cl.CallStream(sigCtx, api.MethodOpWait, api.OpRef{ID: op.ID}, &op, onEvent)
	interrupted := false
	if err != nil && sigCtx.Err() != nil && ctx.Err() == nil {
		interrupted = true
		prog.close()
		fmt.Fprintf(a.stderr, "\ncanceling the %s and removing what it made ...\n", what)
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := cl.Call(cctx, api.MethodOpCancel, api.OpRef{ID: op.ID}, nil); err != nil {
			return op, err
		}
		prog = newProgress(a.stderr)
		err = cl.CallStream(cctx, api.MethodOpWait, api.OpRef{ID: op.ID}, &op, func(string, json.RawMessage) {})
	}
	prog.close()
	if err != nil {
		return op, err
	}
	switch op.State {
	case api.OpSucceeded:
		return op, nil
	case api.OpCanceled:
		fmt.Fprintf(a.stderr, "%s canceled; nothing was left behind\n", what)
		if interrupted {
			return op, ExitError{130}
		}
		return op, errors.New(what + " canceled")
	default:
		return op, fmt.Errorf("%s failed: %s", what, op.Error)
	}
}

func (a *app) vmStartCmd(verb string) *cobra.Command {
	method, short := api.MethodVMStart, "Boot a stopped VM"
	if verb == "restart" {
		method, short = api.MethodVMRestart, "Stop a VM gracefully and boot it again"
	}
	return &cobra.Command{
		Use: verb + " NAME", Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer cl.Close()
			prog := newProgress(a.stderr)
			var v api.VM
			err = cl.CallStream(cmd.Context(), method, api.VMRef{Name: args[0]}, &v, func(event string, data json.RawMessage) {
				var st api.Stage
				if event == api.EventStage && json.Unmarshal(data, &st) == nil {
					prog.stage(st)
				}
			})
			prog.close()
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "vm %s is running at %s (boot %s)\n", v.Name, v.IP, v.BootID)
			return nil
		},
	}
}

func (a *app) vmStopCmd() *cobra.Command {
	var timeout int
	c := &cobra.Command{
		Use: "stop NAME...", Short: "Stop VMs gracefully (guest flushes and powers off)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.each(cmd.Context(), args, func(cl *rpc.Client, name string) error {
				return cl.Call(cmd.Context(), api.MethodVMStop, api.VMStopParams{Name: name, TimeoutSeconds: timeout}, nil)
			})
		},
	}
	c.Flags().IntVarP(&timeout, "time", "t", 60, "seconds to wait for the guest to power off before killing it")
	return c
}

func (a *app) vmKillCmd() *cobra.Command {
	var sig string
	c := &cobra.Command{
		Use: "kill NAME...", Short: "Kill VMs immediately (signal the VMM)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.each(cmd.Context(), args, func(cl *rpc.Client, name string) error {
				return cl.Call(cmd.Context(), api.MethodVMKill, api.VMKillParams{Name: name, Signal: sig}, nil)
			})
		},
	}
	c.Flags().StringVarP(&sig, "signal", "s", "KILL", "signal to send: KILL, TERM, INT, HUP, QUIT, USR1, USR2")
	return c
}

func (a *app) vmDeleteCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use: "delete NAME...", Aliases: []string{"rm"}, Short: "Delete VMs and everything banger made for them", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.each(cmd.Context(), args, func(cl *rpc.Client, name string) error {
				return cl.Call(cmd.Context(), api.MethodVMDelete, api.VMDeleteParams{Name: name, Force: force}, nil)
			})
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "kill a running VM first")
	return c
}

// each runs fn for every name, printing each name that succeeded (like
// docker) and joining the errors.
func (a *app) each(ctx context.Context, names []string, fn func(*rpc.Client, string) error) error {
	cl, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	var errs []error
	for _, n := range names {
		if err := fn(cl, n); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintln(a.stdout, n)
	}
	return errors.Join(errs...)
}

func (a *app) vmListCmd(use string) *cobra.Command {
	c := &cobra.Command{
		Use: use, Aliases: []string{"ls"}, Short: "List VMs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var vms []api.VM
			if err := a.call(cmd.Context(), api.MethodVMList, nil, &vms); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(vms)
			}
			t := newTable(a.stdout)
			t.row("NAME", "STATE", "IMAGE", "IP", "VCPU", "MEMORY", "CREATED")
			for _, v := range vms {
				t.row(v.Name, v.State, v.Image, v.IP, fmt.Sprint(v.VCPU), fmt.Sprintf("%dMiB", v.MemoryMiB), ago(v.CreatedAt))
			}
			return t.flush()
		},
	}
	if use == "ps" {
		c.Aliases = nil
	}
	return a.addJSON(c)
}

func (a *app) vmShowCmd() *cobra.Command {
	return a.addJSON(&cobra.Command{
		Use: "show NAME", Aliases: []string{"inspect"}, Short: "Show a VM in detail", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v api.VM
			if err := a.call(cmd.Context(), api.MethodVMShow, api.VMRef{Name: args[0]}, &v); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(v)
			}
			t := newTable(a.stdout)
			t.row("name", v.Name)
			t.row("state", v.State)
			t.row("image", v.Image)
			t.row("vcpu", fmt.Sprint(v.VCPU))
			t.row("memory", fmt.Sprintf("%d MiB", v.MemoryMiB))
			t.row("ip", v.IP)
			t.row("mac / tap", v.MAC+" / "+v.Tap)
			accel := v.Accel
			if accel == "" {
				accel = "-"
			}
			t.row("vmm", v.Driver+" (accel "+accel+")")
			if v.PID != 0 {
				t.row("pid", fmt.Sprint(v.PID))
			}
			t.row("root disk", fmt.Sprintf("%s %s (%s)", v.RootBackend, v.RootPath, humanBytes(v.DiskSizeBytes)))
			t.row("work disk", fmt.Sprintf("%s (%s, /root)", v.WorkPath, humanBytes(v.WorkSizeBytes)))
			t.row("console", v.ConsoleLog)
			if v.BootID != "" {
				t.row("boot id", v.BootID)
			}
			t.row("created", v.CreatedAt.Local().Format(time.RFC3339))
			if !v.StartedAt.IsZero() {
				t.row("started", v.StartedAt.Local().Format(time.RFC3339))
			}
			var st []string
			for _, s := range v.Stages {
				st = append(st, fmt.Sprintf("%s %s", s.Name, fmtMS(s.DurationMS)))
			}
			if len(st) > 0 {
				t.row("stages", strings.Join(st, ", "))
			}
			if v.LastError != "" {
				t.row("last error", v.LastError)
			}
			return t.flush()
		},
	})
}

func (a *app) vmSetCmd() *cobra.Command {
	var p api.VMSetParams
	var nat bool
	c := &cobra.Command{
		Use:   "set NAME [--vcpu N] [--memory SIZE] [--work-size SIZE] [--nat=true|false]",
		Short: "Change a VM's resources (stopped VM; disks only grow) or its NAT (at once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			natChanged := cmd.Flags().Changed("nat")
			if p.VCPU == 0 && p.Memory == "" && p.WorkSize == "" && !natChanged {
				return errors.New("nothing to change: give --vcpu, --memory, --work-size or --nat")
			}
			if p.VCPU != 0 || p.Memory != "" || p.WorkSize != "" {
				if err := a.call(cmd.Context(), api.MethodVMSet, p, nil); err != nil {
					return err
				}
			}
			if natChanged {
				return a.call(cmd.Context(), api.MethodVMNetwork, api.VMNetworkParams{Name: p.Name, NAT: &nat}, nil)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&nat, "nat", false, "let the guest reach the outside through the host (takes effect at once)")
	c.Flags().IntVar(&p.VCPU, "vcpu", 0, "virtual CPUs")
	c.Flags().StringVar(&p.Memory, "memory", "", "memory, e.g. 2GiB")
	c.Flags().StringVar(&p.WorkSize, "work-size", "", "new size of the /root work disk (grow only)")
	return c
}

func (a *app) vmPruneCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use: "prune [-f]", Short: "Delete every VM that is not running", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !force {
				var vms []api.VM
				if err := a.call(cmd.Context(), api.MethodVMList, nil, &vms); err != nil {
					return err
				}
				var names []string
				for _, v := range vms {
					if v.State == api.StateStopped {
						names = append(names, v.Name)
					}
				}
				if len(names) == 0 {
					fmt.Fprintln(a.stderr, "no stopped VMs")
					return nil
				}
				if !confirm(fmt.Sprintf("delete %d stopped VM(s): %s?", len(names), strings.Join(names, ", "))) {
					return errors.New("not confirmed (use -f to skip the question)")
				}
			}
			var res api.VMPruneResult
			err := a.call(cmd.Context(), api.MethodVMPrune, nil, &res)
			for _, n := range res.Deleted {
				fmt.Fprintln(a.stdout, n)
			}
			return err
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	return c
}

func confirm(q string) bool {
	fmt.Fprintf(os.Stderr, "%s [y/N] ", q)
	var ans string
	fmt.Fscanln(os.Stdin, &ans)
	return strings.EqualFold(ans, "y") || strings.EqualFold(ans, "yes")
}
