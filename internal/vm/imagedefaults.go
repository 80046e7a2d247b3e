package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/image"
	"banger/internal/kernel"
	"banger/internal/recipe"
	"banger/internal/rpc"
	"banger/internal/store"
)

// StagePullKernel prefixes the stages of a kernel pulled during an image
// pull ("kernel: download", ...).
const StagePullKernel = "kernel: "

// StageRecipe names the stages of a recipe build ("recipe: debootstrap").
const StageRecipe = "recipe: "

// bootKernel is the kernel a pulled image boots with: [image] kernel and
// initrd of the config when set, else the store kernel [image]
// default_kernel (debian-cloud by default; Name set), which an image pull
// fetches first when it is missing (pull).
type bootKernel struct {
	Kernel, Initrd string
	Name           string // store kernel; its initramfs is banger's own
	pull           bool
}

// pullKernel chooses the kernel of an image about to be pulled. It checks
// the configured files now; a missing store kernel is pulled later, by the
// operation (ensureKernel).
func (s *Service) pullKernel(ctx context.Context) (bootKernel, error) {
	var bk bootKernel
	if s.Config.Image.Kernel != "" {
		var err error
		if bk.Kernel, err = hostFile("[image] kernel", s.Config.Image.Kernel, checkKernel); err != nil {
			return bk, err
		}
		if s.Config.Image.Initrd != "" {
			if bk.Initrd, err = hostFile("[image] initrd", s.Config.Image.Initrd, nil); err != nil {
				return bk, err
			}
		}
		return bk, nil
	}
	if s.Kernels == nil {
		return bk, rpc.Errorf(rpc.CodeFailedPrecondition,
			"pulled images need a kernel: set [image] kernel (and initrd) in config.toml, or run a daemon with a kernel store")
	}
	bk.Name = s.Config.Image.DefaultKernel
	if bk.Name == "" {
		bk.Name = kernel.DefaultName
	}
	k, err := s.Kernels.Get(ctx, bk.Name)
	switch {
	case err == nil:
		bk.Kernel = kernel.Image(k)
	case errors.Is(err, store.ErrNotFound) || rpc.CodeOf(err) == rpc.CodeNotFound:
		if _, ok := kernel.Lookup(bk.Name); !ok {
			return bk, rpc.Errorf(rpc.CodeFailedPrecondition,
				"[image] default_kernel = %q: no such kernel in the store (see `banger kernel list`) and none to pull by that name", bk.Name)
		}
		bk.pull = true
	default:
		return bk, err
	}
	return bk, nil
}

// ensureKernel pulls the store kernel bk names when it is missing, as the
// first stages of an image pull.
func (s *Service) ensureKernel(ctx context.Context, bk *bootKernel, st *stages) error {
	if !bk.pull {
		return nil
	}
	k, err := s.Kernels.Pull(ctx, bk.Name, false, func(stage api.Stage) {
		stage.Name = StagePullKernel + stage.Name
		st.report(stage)
	})
	if rpc.CodeOf(err) == rpc.CodeConflict { // pulled meanwhile by someone else
		k, err = s.Kernels.Get(ctx, bk.Name)
	}
	if err != nil {
		return err
	}
	bk.Kernel, bk.pull = kernel.Image(k), false
	return nil
}

// pullRecipe begins building the built-in recipe r into the image name
// (image pull NAME --build, or NAME has no catalog bundle). It refuses at
// once what cannot work (not root, tools or apt source missing).
func (s *Service) pullRecipe(ctx context.Context, r *recipe.Recipe, p api.ImagePullParams) (api.Op, error) {
	if p.Size != "" {
		return api.Op{}, invalid("--size applies to registry pulls; recipe image %s is sized from its content", r.Name)
	}
	name, err := pullName(p.Name, r.Name)
	if err != nil {
		return api.Op{}, err
	}
	if _, err := recipe.Check(ctx, r.Name); err != nil {
		return api.Op{}, rpc.Errorf(rpc.CodeFailedPrecondition, "%v", err)
	}
	bk, err := s.pullKernel(ctx)
	if err != nil {
		return api.Op{}, err
	}
	s.reserve.Lock()
	err = s.claimImage(ctx, name)
	s.reserve.Unlock()
	if err != nil {
		return api.Op{}, err
	}
	s.Log.Info("recipe build begins", "image", name, "recipe", r.Name)
	return s.ops.beginOp(api.Op{Kind: api.MethodImagePull, Image: name}, func(ctx context.Context, report Reporter) error {
		defer s.releaseImage(name)
		st := newStages(name, s.Log, report)
		return s.inStaging(name, func(staging string) error {
			return s.buildRecipe(ctx, staging, name, r, bk, st)
		})
	}), nil
}

// buildRecipe builds r in staging (debootstrap from the host's apt source,
// configure, ext4) and registers it as the image name.
func (s *Service) buildRecipe(ctx context.Context, staging, name string, r *recipe.Recipe, bk bootKernel, st *stages) error {
	if err := s.ensureKernel(ctx, &bk, st); err != nil {
		return err
	}
	// Built once per recipe hash into banger's cache, then placed in the
	// image store (hard links where the file systems allow).
	cached, built, err := recipe.BuildCached(ctx, r, s.recipeCacheDir(), recipe.Options{}, func(stage string, fn func() error) error {
		return st.run(ctx, StageRecipe+stage, fn)
	})
	if err != nil {
		return err
	}
	if !built {
		st.skip(StageRecipe+"build", "built before: "+cached)
	}
	var res recipe.Result
	if err := st.run(ctx, StageRecipe+"place", func() error {
		var err error
		res, err = placeRecipeBuild(ctx, cached, staging)
		return err
	}); err != nil {
		return err
	}
	return st.run(ctx, StageRegister, func() error {
		if err := image.WriteMeta(staging, image.Meta{Source: store.SourceRecipe, Ref: r.Name, Digest: "recipe:" + res.Manifest.Hash}); err != nil {
			return err
		}
		im := store.Image{Name: name, Kernel: bk.Kernel, Initrd: bk.Initrd, Managed: true, SizeBytes: res.Manifest.RootFSBytes,
			CreatedAt: nowUTC(), Source: store.SourceRecipe, Ref: r.Name, Digest: "recipe:" + res.Manifest.Hash,
			ContentBytes: res.Manifest.ContentBytes}
		if res.WorkSeed != "" {
			rel, err := filepath.Rel(staging, res.WorkSeed)
			if err != nil {
				return err
			}
			im.WorkSeed = rel // made absolute by commitImage
		}
		return s.commitImage(staging, im, bk.Name)
	})
}

// recipeCacheDir keeps finished recipe builds, one per recipe hash.
func (s *Service) recipeCacheDir() string { return filepath.Join(s.Paths.CacheDir, "recipes") }

// placeRecipeBuild puts a cached recipe build into staging: the root
// filesystem hard-linked (copied sparsely across file systems; images are
// never written in place), the work seed copied, the manifest read.
func placeRecipeBuild(ctx context.Context, cached, staging string) (recipe.Result, error) {
	var res recipe.Result
	b, err := os.ReadFile(filepath.Join(cached, recipe.ManifestFile))
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(b, &res.Manifest); err != nil {
		return res, fmt.Errorf("%s: %w", filepath.Join(cached, recipe.ManifestFile), err)
	}
	res.RootFS = filepath.Join(staging, image.RootFSFile)
	src := filepath.Join(cached, recipe.RootFSFile)
	if err := os.Link(src, res.RootFS); err != nil {
		if err := disk.SparseCopy(ctx, src, res.RootFS); err != nil {
			return res, err
		}
	}
	seed := filepath.Join(cached, recipe.SeedDir)
	if _, err := os.Stat(seed); err == nil {
		res.WorkSeed = filepath.Join(staging, image.SeedDir)
		if out, err := exec.CommandContext(ctx, "cp", "-a", "--", seed, res.WorkSeed).CombinedOutput(); err != nil {
			return res, fmt.Errorf("copy the work seed: %v: %s", err, strings.TrimSpace(string(out)))
		}
	}
	return res, nil
}
