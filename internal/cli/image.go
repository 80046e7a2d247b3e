package cli

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

func (a *app) imageCmd() *cobra.Command {
	c := &cobra.Command{Use: "image", Short: "Manage images (root filesystem + kernel)"}
	var reg api.ImageRegisterParams
	register := &cobra.Command{
		Use: "register --name NAME --rootfs FILE (--kernel FILE [--initrd FILE] | --kernel-name NAME)", Short: "Register host files as an image (banger never modifies them)",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := reg
			for _, f := range []*string{&p.RootFS, &p.Kernel, &p.Initrd} {
				if *f != "" {
					abs, err := filepath.Abs(*f)
					if err != nil {
						return err
					}
					*f = abs
				}
			}
			var im api.Image
			if err := a.call(cmd.Context(), api.MethodImageRegister, p, &im); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, im.Name)
			return nil
		},
	}
	register.Flags().StringVar(&reg.Name, "name", "", "image name")
	register.Flags().StringVar(&reg.RootFS, "rootfs", "", "raw ext4 root filesystem image")
	register.Flags().StringVar(&reg.Kernel, "kernel", "", "kernel (ELF vmlinux or bzImage)")
	register.Flags().StringVar(&reg.Initrd, "initrd", "", "initramfs (optional)")
	register.Flags().StringVar(&reg.KernelName, "kernel-name", "", "a kernel from `banger kernel list` instead of --kernel/--initrd")

	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List images", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ims []api.Image
			if err := a.call(cmd.Context(), api.MethodImageList, nil, &ims); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(ims)
			}
			t := newTable(a.stdout)
			t.row("NAME", "SIZE", "MANAGED", "USED BY", "CREATED")
			for _, im := range ims {
				t.row(im.Name, humanBytes(im.SizeBytes), fmt.Sprint(im.Managed), strings.Join(im.UsedBy, ","), ago(im.CreatedAt))
			}
			return t.flush()
		},
	}
	show := &cobra.Command{
		Use: "show NAME", Short: "Show an image", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var im api.Image
			if err := a.call(cmd.Context(), api.MethodImageShow, api.ImageRef{Name: args[0]}, &im); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(im)
			}
			t := newTable(a.stdout)
			t.row("name", im.Name)
			t.row("rootfs", im.RootFS)
			t.row("kernel", im.Kernel)
			t.row("initrd", im.Initrd)
			t.row("kernel name", im.KernelName)
			t.row("size", humanBytes(im.SizeBytes))
			t.row("managed", fmt.Sprint(im.Managed))
			t.row("used by", strings.Join(im.UsedBy, ", "))
			return t.flush()
		},
	}
	del := &cobra.Command{
		Use: "delete NAME", Aliases: []string{"rm"}, Short: "Delete an image (refused while a VM uses it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd.Context(), api.MethodImageDelete, api.ImageRef{Name: args[0]}, nil)
		},
	}
	c.AddCommand(register, a.addJSON(list), a.addJSON(show), del)
	return c
}
