package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/kernel"
)

func (a *app) kernelCmd() *cobra.Command {
	c := &cobra.Command{Use: "kernel", Short: "Manage guest kernels (kernel image + modules; banger makes the initramfs)"}
	var available bool
	list := &cobra.Command{
		Use: "list [--available]", Aliases: []string{"ls"}, Short: "List kernels in the store, or those `kernel pull` knows", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if available {
				var av []api.KernelAvailable
				if err := a.call(cmd.Context(), api.MethodKernelList, api.KernelListParams{Available: true}, &av); err != nil {
					return err
				}
				if a.json {
					return a.printJSON(av)
				}
				t := newTable(a.stdout)
				t.row("NAME", "PACKAGE", "BUNDLE", "PULLED", "DESCRIPTION")
				for _, k := range av {
					t.row(k.Name, dash(k.Package), dash(k.Bundle), fmt.Sprint(k.Pulled), k.Description)
				}
				return t.flush()
			}
			var ks []api.Kernel
			if err := a.call(cmd.Context(), api.MethodKernelList, api.KernelListParams{}, &ks); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(ks)
			}
			t := newTable(a.stdout)
			t.row("NAME", "RELEASE", "SIZE", "USED BY", "SOURCE", "CREATED")
			for _, k := range ks {
				t.row(k.Name, k.Release, humanBytes(k.SizeBytes), strings.Join(k.UsedBy, ","), k.Source, ago(k.CreatedAt))
			}
			return t.flush()
		},
	}
	list.Flags().BoolVar(&available, "available", false, "list the kernels `kernel pull` can fetch")
	show := &cobra.Command{
		Use: "show NAME", Short: "Show a kernel", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var k api.Kernel
			if err := a.call(cmd.Context(), api.MethodKernelShow, api.KernelRef{Name: args[0]}, &k); err != nil {
				return err
			}
			return a.printKernel(k)
		},
	}
	var pull api.KernelPullParams
	pullCmd := &cobra.Command{
		Use: "pull [NAME] [--force]", Short: "Fetch a kernel: its catalog bundle, else its Debian package from the host's apt sources (default debian-cloud)", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := pull
			if len(args) == 1 {
				p.Name = args[0]
			}
			return a.kernelOp(cmd.Context(), api.MethodKernelPull, p)
		},
	}
	pullCmd.Flags().BoolVar(&pull.Force, "force", false, "fetch again and replace a kernel of that name")
	var imp api.KernelImportParams
	importCmd := &cobra.Command{
		Use: "import NAME --kernel FILE (--modules DIR | --deb FILE)", Short: "Import a kernel from host files (copied into the store)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := imp
			p.Name = args[0]
			for _, f := range []*string{&p.Kernel, &p.Modules, &p.Deb} {
				if *f != "" {
					abs, err := filepath.Abs(*f)
					if err != nil {
						return err
					}
					*f = abs
				}
			}
			return a.kernelOp(cmd.Context(), api.MethodKernelImport, p)
		},
	}
	importCmd.Flags().StringVar(&imp.Kernel, "kernel", "", "kernel image (bzImage or ELF vmlinux); with --deb, default the package's")
	importCmd.Flags().StringVar(&imp.Modules, "modules", "", "its modules: a lib/modules/RELEASE directory")
	importCmd.Flags().StringVar(&imp.Deb, "deb", "", "a Debian kernel package (.deb), unpacked, never installed")
	importCmd.Flags().BoolVar(&imp.Force, "force", false, "replace a kernel of that name")
	rm := &cobra.Command{
		Use: "rm NAME", Aliases: []string{"delete"}, Short: "Remove a kernel (refused while an image uses it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd.Context(), api.MethodKernelRemove, api.KernelRef{Name: args[0]}, nil)
		},
	}
	c.AddCommand(a.addJSON(list), a.addJSON(show), a.addJSON(pullCmd), a.addJSON(importCmd), rm, a.kernelBundleCmd())
	return c
}

func (a *app) kernelBundleCmd() *cobra.Command {
	return a.bundleCmd("Write a kernel (vmlinuz + modules) as a catalog bundle and print its name, sha256 and size",
		func(ctx context.Context, name, out, desc string) (string, int64, error) {
			var k api.Kernel
			if err := a.call(ctx, api.MethodKernelShow, api.KernelRef{Name: name}, &k); err != nil {
				return "", 0, err
			}
			m := kernel.BundleManifest{Name: k.Name, Description: desc, Release: k.Release, Origin: k.Source, CreatedAt: time.Now().UTC()}
			return kernel.WriteBundle(ctx, out, m, k.Kernel, k.Modules)
		})
}

// kernelOp runs a kernel pull or import, showing its stages, and prints the kernel.
func (a *app) kernelOp(ctx context.Context, method string, params any) error {
	prog := newProgress(a.stderr)
	var k api.Kernel
	err := a.callStream(ctx, method, params, &k, func(event string, data json.RawMessage) {
		var st api.Stage
		if event == api.EventStage && json.Unmarshal(data, &st) == nil {
			prog.stage(st)
		}
	})
	prog.close()
	if err != nil {
		return err
	}
	return a.printKernel(k)
}

func (a *app) printKernel(k api.Kernel) error {
	if a.json {
		return a.printJSON(k)
	}
	t := newTable(a.stdout)
	t.row("name", k.Name)
	t.row("release", k.Release)
	t.row("kernel", k.Kernel)
	t.row("modules", k.Modules)
	t.row("source", k.Source)
	t.row("size", humanBytes(k.SizeBytes))
	t.row("used by", strings.Join(k.UsedBy, ", "))
	return t.flush()
}
