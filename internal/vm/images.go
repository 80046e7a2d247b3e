package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/rpc"
	"banger/internal/store"
)

var imageNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)

// pullName is the name a pulled image gets: --name when given, else dflt
// (derived from what is pulled), checked like a registered image's.
func pullName(given, dflt string) (string, error) {
	name := given
	if name == "" {
		name = dflt
	}
	if !imageNameRE.MatchString(name) {
		return "", invalid("image name %q: use 1-64 lowercase letters, digits, '.', '_' and '-', starting and ending with a letter or digit (--name)", name)
	}
	return name, nil
}

// RegisterImage records host files as an unmanaged image after checking that
// they exist and look like what they claim to be.
func (s *Service) RegisterImage(ctx context.Context, p api.ImageRegisterParams) (api.Image, error) {
	if !imageNameRE.MatchString(p.Name) {
		return api.Image{}, invalid("image name %q: use 1-64 lowercase letters, digits, '.', '_' and '-', starting and ending with a letter or digit", p.Name)
	}
	var err error
	im := store.Image{Name: p.Name, CreatedAt: nowUTC()}
	if im.RootFS, err = hostFile("--rootfs", p.RootFS, checkExt4); err != nil {
		return api.Image{}, err
	}
	var k store.Kernel
	if p.KernelName != "" {
		if p.Kernel != "" || p.Initrd != "" {
			return api.Image{}, invalid("--kernel-name excludes --kernel and --initrd (banger makes the initramfs of a store kernel)")
		}
		if s.Kernels == nil {
			return api.Image{}, invalid("--kernel-name: this daemon has no kernel store")
		}
		if k, err = s.Kernels.Get(ctx, p.KernelName); err != nil {
			return api.Image{}, err
		}
		im.Kernel = kernel.Image(k)
	} else {
		if im.Kernel, err = hostFile("--kernel", p.Kernel, checkKernel); err != nil {
			return api.Image{}, err
		}
		if p.Initrd != "" {
			if im.Initrd, err = hostFile("--initrd", p.Initrd, nil); err != nil {
				return api.Image{}, err
			}
		}
	}
	st, _ := os.Stat(im.RootFS)
	im.SizeBytes = st.Size()
	s.reserve.Lock()
	defer s.reserve.Unlock()
	if s.images.busy[p.Name] {
		return api.Image{}, rpc.Errorf(rpc.CodeConflict, "image %q is being pulled right now", p.Name)
	}
	if _, err := s.Store.GetImage(ctx, p.Name); err == nil {
		return api.Image{}, rpc.Errorf(rpc.CodeConflict, "an image named %q already exists", p.Name)
	}
	im.Source = store.SourceRegistered
	if err := s.Store.InsertImage(ctx, im); err != nil {
		return api.Image{}, err
	}
	if k.Name != "" {
		if err := s.Store.SetImageKernel(ctx, im.Name, k.Name); err != nil {
			if derr := s.Store.DeleteImage(context.WithoutCancel(ctx), im.Name); derr != nil {
				err = fmt.Errorf("%w (and removing the image row: %v)", err, derr)
			}
			return api.Image{}, err
		}
	}
	s.Log.Info("image registered", "image", im.Name, "rootfs", im.RootFS, "kernel", im.Kernel)
	v := imageView(im, nil)
	v.KernelName = k.Name
	return v, nil
}

// hostFile resolves a user-given path to an absolute, symlink-free path of a
// regular file and runs check on it.
func hostFile(flag, p string, check func(*os.File) error) (string, error) {
	if p == "" {
		return "", invalid("%s is required", flag)
	}
	if !filepath.IsAbs(p) {
		return "", invalid("%s %q: give an absolute path (the CLI resolves relative ones)", flag, p)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", invalid("%s %q: %v", flag, p, err)
	}
	f, err := os.Open(real)
	if err != nil {
		return "", invalid("%s %q: %v", flag, p, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return "", invalid("%s %q: not a regular file", flag, p)
	}
	if check != nil {
		if err := check(f); err != nil {
			return "", invalid("%s %q: %v", flag, p, err)
		}
	}
	return real, nil
}

// checkExt4 looks for the ext2/3/4 superblock magic 0xEF53 at offset 1080.
func checkExt4(f *os.File) error {
	b := make([]byte, 2)
	if _, err := f.ReadAt(b, 1080); err != nil || b[0] != 0x53 || b[1] != 0xEF {
		return fmt.Errorf("not a raw ext4 filesystem image (no ext4 superblock)")
	}
	return nil
}

// checkKernel accepts an ELF vmlinux or an x86 bzImage.
func checkKernel(f *os.File) error { return kernel.CheckImage(f) }

func imageView(im store.Image, usedBy []string) api.Image {
	return api.Image{Name: im.Name, RootFS: im.RootFS, Kernel: im.Kernel, Initrd: im.Initrd, Managed: im.Managed,
		SizeBytes: im.SizeBytes, CreatedAt: im.CreatedAt, UsedBy: usedBy, Source: im.Source, Ref: im.Ref,
		Digest: im.Digest, Dir: im.Dir, ContentBytes: im.ContentBytes}
}

func (s *Service) imageUsers(ctx context.Context) (map[string][]string, error) {
	vms, err := s.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	users := map[string][]string{}
	for _, v := range vms {
		users[v.Image] = append(users[v.Image], v.Name)
	}
	return users, nil
}

// ListImages returns every image with the VMs that use it.
func (s *Service) ListImages(ctx context.Context) ([]api.Image, error) {
	ims, err := s.Store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	users, err := s.imageUsers(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Image, 0, len(ims))
	for _, im := range ims {
		v := imageView(im, users[im.Name])
		if v.KernelName, err = s.Store.ImageKernel(ctx, im.Name); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// ShowImage returns one image.
func (s *Service) ShowImage(ctx context.Context, name string) (api.Image, error) {
	im, err := s.Store.GetImage(ctx, name)
	if err != nil {
		return api.Image{}, rpc.Errorf(rpc.CodeNotFound, "no image named %q (see `banger image list`)", name)
	}
	users, err := s.imageUsers(ctx)
	if err != nil {
		return api.Image{}, err
	}
	v := imageView(im, users[name])
	v.KernelName, err = s.Store.ImageKernel(ctx, name)
	return v, err
}

// DeleteImage removes an image; it refuses while a VM uses it or an
// operation (promote) works on it. A managed image's directory in banger's
// store is removed with it; registered (unmanaged) files are never deleted.
func (s *Service) DeleteImage(ctx context.Context, name string) error {
	s.reserve.Lock()
	defer s.reserve.Unlock()
	if s.images.busy[name] {
		return rpc.Errorf(rpc.CodeConflict, "image %q is being pulled or promoted right now; delete it when that has finished", name)
	}
	im, err := s.ShowImage(ctx, name)
	if err != nil {
		return err
	}
	if len(im.UsedBy) > 0 {
		return rpc.Errorf(rpc.CodeFailedPrecondition, "image %s is used by VM(s) %v; delete them first", name, im.UsedBy)
	}
	if err := s.Store.DeleteImage(ctx, name); err != nil {
		return err
	}
	if im.Managed && im.Dir != "" {
		if err := s.imageStore().Remove(name); err != nil {
			return fmt.Errorf("image %s deleted, but removing %s failed: %w", name, im.Dir, err)
		}
	}
	s.Log.Info("image deleted", "image", name, "managed", im.Managed)
	return nil
}
