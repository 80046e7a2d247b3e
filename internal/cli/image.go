package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/rpc"
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
			t.row("NAME", "SOURCE", "SIZE", "MANAGED", "USED BY", "CREATED")
			for _, im := range ims {
				t.row(im.Name, im.Source, humanBytes(im.SizeBytes), fmt.Sprint(im.Managed), strings.Join(im.UsedBy, ","), ago(im.CreatedAt))
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
			t.row("source", im.Source)
			if im.Ref != "" {
				t.row("ref", im.Ref)
			}
			if im.Digest != "" {
				t.row("digest", im.Digest)
			}
			if im.Dir != "" {
				t.row("dir", im.Dir)
			}
			if im.ContentBytes > 0 {
				t.row("content", humanBytes(im.ContentBytes))
			}
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
	c.AddCommand(register, a.addJSON(list), a.addJSON(show), del, a.imagePullCmd(), a.imagePromoteCmd(), a.imageCacheCmd(), a.imageBundleCmd())
	return c
}

func (a *app) imagePullCmd() *cobra.Command {
	var p api.ImagePullParams
	c := &cobra.Command{
		Use:   "pull REF [--name NAME] [--size 4GiB|512M]",
		Short: "Pull an image from a registry into banger's store (e.g. docker.io/library/debian:bookworm)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Ref = args[0]
			ctx := cmd.Context()
			cl, err := a.connect(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			im, err := a.pullImage(ctx, cl, p)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(im)
			}
			fmt.Fprintf(a.stdout, "%s\t%s\t%s (content %s)\n", im.Name, im.Digest, humanBytes(im.SizeBytes), humanBytes(im.ContentBytes))
			return nil
		},
	}
	c.Flags().StringVar(&p.Name, "name", "", "image name (default: from the reference, e.g. debian-bookworm)")
	c.Flags().StringVar(&p.Size, "size", "", "root filesystem size, e.g. 4GiB or 512M (default: from the content)")
	c.Flags().BoolVar(&p.Insecure, "insecure", false, "allow plain HTTP to a registry that is not local")
	c.Flags().BoolVar(&p.Build, "build", false, "build a built-in recipe (e.g. debian-bookworm) from the host's Debian packages instead of downloading it")
	return a.addJSON(c)
}

// pullImage runs an image pull, drawing its progress, and returns the image.
func (a *app) pullImage(ctx context.Context, cl *rpc.Client, p api.ImagePullParams) (api.Image, error) {
	var op api.Op
	if err := cl.Call(ctx, api.MethodImagePull, p, &op); err != nil {
		return api.Image{}, err
	}
	fmt.Fprintf(a.stderr, "pulling %s as image %s\n", p.Ref, op.Image)
	if _, err := a.follow(ctx, cl, op, "pull of "+op.Image); err != nil {
		return api.Image{}, err
	}
	var im api.Image
	err := cl.Call(ctx, api.MethodImageShow, api.ImageRef{Name: op.Image}, &im)
	return im, err
}

func (a *app) imagePromoteCmd() *cobra.Command {
	return a.addJSON(&cobra.Command{
		Use: "promote NAME", Short: "Copy a registered image's files into banger's store", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var im api.Image
			if err := a.call(cmd.Context(), api.MethodImagePromote, api.ImageRef{Name: args[0]}, &im); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(im)
			}
			fmt.Fprintf(a.stdout, "%s\t%s\n", im.Name, im.Dir)
			return nil
		},
	})
}

func (a *app) imageCacheCmd() *cobra.Command {
	c := &cobra.Command{Use: "cache", Short: "Manage the cache of registry layers"}
	var p api.ImageCachePruneParams
	prune := &cobra.Command{
		Use: "prune [--dry-run]", Short: "Remove cached registry layers (pulled images keep working)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var r api.ImageCachePruneResult
			if err := a.call(cmd.Context(), api.MethodImageCachePrune, p, &r); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			verb := "freed"
			if r.DryRun {
				verb = "would free"
			}
			fmt.Fprintf(a.stdout, "%d files, %s %s\n", r.Files, humanBytes(r.Bytes), verb)
			return nil
		},
	}
	prune.Flags().BoolVar(&p.DryRun, "dry-run", false, "only report what would be removed")
	c.AddCommand(a.addJSON(prune))
	return c
}

func (a *app) imageBundleCmd() *cobra.Command {
	return a.bundleCmd("Write an image as a catalog bundle and print its name, sha256 and size",
		func(ctx context.Context, name, out, desc string) (string, int64, error) {
			var im api.Image
			if err := a.call(ctx, api.MethodImageShow, api.ImageRef{Name: name}, &im); err != nil {
				return "", 0, err
			}
			seed := ""
			if im.Managed && im.Dir != "" {
				if st, err := os.Stat(filepath.Join(im.Dir, image.SeedDir)); err == nil && st.IsDir() {
					seed = filepath.Join(im.Dir, image.SeedDir)
				}
			}
			m := image.BundleManifest{Name: im.Name, Description: desc, ContentBytes: im.ContentBytes, CreatedAt: time.Now().UTC()}
			return image.WriteBundle(ctx, out, m, im.RootFS, seed)
		})
}

// bundleCmd is `image bundle` or `kernel bundle`: write (given the NAME,
// the absolute -o path and --description) makes the bundle.
func (a *app) bundleCmd(short string, write func(ctx context.Context, name, out, desc string) (sum string, size int64, err error)) *cobra.Command {
	var out, desc string
	c := &cobra.Command{
		Use:   "bundle NAME -o FILE.tar.zst",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return fmt.Errorf("-o FILE is required (e.g. -o %s.tar.zst)", args[0])
			}
			abs, err := filepath.Abs(out)
			if err != nil {
				return err
			}
			sum, size, err := write(cmd.Context(), args[0], abs, desc)
			if err != nil {
				return err
			}
			r := bundleResult{Name: args[0], File: abs, SHA256: sum, Size: size}
			if a.json {
				return a.printJSON(r)
			}
			fmt.Fprintf(a.stdout, "%s\t%s\t%d\n", r.Name, r.SHA256, r.Size)
			return nil
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "bundle file to write (must not exist)")
	c.Flags().StringVar(&desc, "description", "", "description recorded in the bundle")
	return a.addJSON(c)
}

// bundleResult is what `image bundle` and `kernel bundle` print: what a
// catalog entry needs.
type bundleResult struct {
	Name   string `json:"name"`
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}
