package vm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/image"
	"banger/internal/oci"
	"banger/internal/recipe"
	"banger/internal/rpc"
	"banger/internal/store"
)

// StageRegister is the last stage of an image pull: the staged directory
// is renamed into the store and the image row inserted.
const StageRegister = "register image"

// imageState is what image operations share.
type imageState struct {
	// busy names images being pulled or promoted; guarded by
	// Service.reserve. A busy name cannot be registered, pulled again or
	// deleted.
	busy map[string]bool
	// bundlePulls maps an image name to the catalog pull making it, so a
	// second pull of the name joins it; guarded by Service.reserve.
	bundlePulls map[string]string
	// blobs is read-locked by pulls while they read cached registry
	// blobs, and write-locked by a cache prune.
	blobs sync.RWMutex
}

// claimImage marks name busy; it fails when an image or another operation
// has it. Caller holds s.reserve.
func (s *Service) claimImage(ctx context.Context, name string) error {
	if s.images.busy[name] {
		return rpc.Errorf(rpc.CodeConflict, "image %q is being pulled or promoted right now; wait for that to finish", name)
	}
	if _, err := s.Store.GetImage(ctx, name); err == nil {
		return rpc.Errorf(rpc.CodeConflict, "an image named %q already exists; pick another with --name or delete it first", name)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if s.images.busy == nil {
		s.images.busy = map[string]bool{}
	}
	s.images.busy[name] = true
	return nil
}

func (s *Service) releaseImage(name string) {
	s.reserve.Lock()
	defer s.reserve.Unlock()
	delete(s.images.busy, name)
}

func (s *Service) imageStore() image.Store { return image.Store{Dir: s.Paths.ImagesDir()} }

func (s *Service) blobCacheDir() string { return filepath.Join(s.Paths.CacheDir, "oci") }

// PullImage validates p, claims the image name and begins the asynchronous
// pull: download layers (cached), flatten them, inject banger's guest
// files, build the ext4, and register the image. A failure or cancel
// leaves no row and no files.
func (s *Service) PullImage(ctx context.Context, p api.ImagePullParams) (api.Op, error) {
	ref := strings.TrimSpace(p.Ref)
	if ref == "" {
		return api.Op{}, invalid("image pull: give a registry reference, e.g. docker.io/library/debian:bookworm")
	}
	if isPlainName(ref) {
		r, rerr := recipe.Get(ref)
		if p.Build {
			if rerr != nil {
				return api.Op{}, invalid("--build: %v", rerr)
			}
			return s.pullRecipe(ctx, r, p)
		}
		cat, err := s.imageCatalog(ctx)
		if err != nil && rerr != nil {
			return api.Op{}, err
		}
		if e, ok := cat.Lookup(ref); ok && err == nil {
			return s.pullBundle(ctx, e, p)
		}
		if rerr == nil { // no bundle published (or no catalog answers): build it here
			return s.pullRecipe(ctx, r, p)
		}
	} else if p.Build {
		return api.Op{}, invalid("--build takes the name of a built-in recipe (e.g. %s), not a registry reference", api.DefaultImageSource)
	}
	if err := image.CheckRef(ref); err != nil {
		return api.Op{}, invalid("%v", err)
	}
	name, err := pullName(p.Name, oci.DefaultName(ref))
	if err != nil {
		return api.Op{}, err
	}
	req := image.OCIRequest{Ref: ref, CacheDir: s.blobCacheDir(), Insecure: p.Insecure, Hold: &s.images.blobs}
	if p.Size != "" {
		var err error
		if req.Size, err = disk.ParseSize(p.Size); err != nil {
			return api.Op{}, invalid("--size: %v", err)
		}
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
	s.Log.Info("image pull begins", "image", name, "ref", ref)
	return s.ops.beginOp(api.Op{Kind: api.MethodImagePull, Image: name}, func(ctx context.Context, report Reporter) error {
		defer s.releaseImage(name)
		return s.runPull(ctx, name, req, bk, report)
	}), nil
}

// inStaging runs build with a new staging directory of the image store
// and removes the directory afterwards (a successful build has renamed it
// into place with commitImage).
func (s *Service) inStaging(name string, build func(staging string) error) (err error) {
	staging, err := s.imageStore().Stage()
	if err != nil {
		return err
	}
	defer func() {
		if rerr := os.RemoveAll(staging); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			s.Log.Warn("image pull failed; nothing kept", "image", name, "err", err)
		}
	}()
	return build(staging)
}

func (s *Service) runPull(ctx context.Context, name string, req image.OCIRequest, bk bootKernel, report Reporter) error {
	return s.inStaging(name, func(staging string) error {
		return s.buildPull(ctx, staging, name, req, bk, newStages(name, s.Log, report))
	})
}

func (s *Service) buildPull(ctx context.Context, staging, name string, req image.OCIRequest, bk bootKernel, st *stages) error {
	if err := s.ensureKernel(ctx, &bk, st); err != nil {
		return err
	}
	res, err := image.BuildFromOCI(ctx, req, staging,
		func(stage string, fn func() error) error { return st.run(ctx, stage, fn) },
		func(done, total int64, detail string) { st.progress(image.StagePull, done, total, detail) })
	if err != nil {
		return err
	}
	return st.run(ctx, StageRegister, func() error {
		im := store.Image{Name: name, Kernel: bk.Kernel, Initrd: bk.Initrd, Managed: true,
			SizeBytes: res.SizeBytes, CreatedAt: nowUTC(), Source: store.SourceOCI, Ref: req.Ref, Digest: res.Digest,
			ContentBytes: res.ContentBytes}
		if res.WorkSeed {
			im.WorkSeed = image.SeedDir // made absolute by commitImage
		}
		return s.commitImage(staging, im, bk.Name)
	})
}

// commitImage renames staging into the store as im.Name and inserts the
// row (RootFS and Dir filled in), linked to the store kernel kernelName
// when not ""; when a write fails the row and the directory are removed.
func (s *Service) commitImage(staging string, im store.Image, kernelName string) error {
	is := s.imageStore()
	dir, err := is.Commit(staging, im.Name)
	if err != nil {
		return err
	}
	im.Dir, im.RootFS = dir, filepath.Join(dir, image.RootFSFile)
	if im.WorkSeed != "" {
		im.WorkSeed = filepath.Join(dir, im.WorkSeed)
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := s.Store.InsertImage(ctx, im); err != nil {
		return errors.Join(fmt.Errorf("record image %s: %w", im.Name, err), is.Remove(im.Name))
	}
	if kernelName != "" {
		if err := s.Store.SetImageKernel(ctx, im.Name, kernelName); err != nil {
			return errors.Join(fmt.Errorf("link image %s to kernel %s: %w", im.Name, kernelName, err),
				s.Store.DeleteImage(ctx, im.Name), is.Remove(im.Name))
		}
	}
	s.Log.Info("image stored", "image", im.Name, "source", im.Source, "dir", dir, "bytes", im.SizeBytes)
	return nil
}

// storeTimeout bounds store writes that must land even after a cancel.
const storeTimeout = 10 * time.Second

// PromoteImage copies a registered image's root filesystem, kernel and
// initrd into banger's store, so the image no longer depends on the host
// files it was registered from.
func (s *Service) PromoteImage(ctx context.Context, name string) (_ api.Image, err error) {
	s.reserve.Lock()
	im, gerr := s.Store.GetImage(ctx, name)
	switch {
	case errors.Is(gerr, store.ErrNotFound):
		gerr = rpc.Errorf(rpc.CodeNotFound, "no image named %q (see `banger image list`)", name)
	case gerr == nil && im.Managed:
		gerr = rpc.Errorf(rpc.CodeFailedPrecondition, "image %s is already in banger's store (%s)", name, im.Dir)
	case gerr == nil && s.images.busy[name]:
		gerr = rpc.Errorf(rpc.CodeConflict, "image %q is being promoted right now", name)
	}
	if gerr == nil {
		if s.images.busy == nil {
			s.images.busy = map[string]bool{}
		}
		s.images.busy[name] = true
	}
	s.reserve.Unlock()
	if gerr != nil {
		return api.Image{}, gerr
	}
	defer s.releaseImage(name)
	is := s.imageStore()
	staging, err := is.Stage()
	if err != nil {
		return api.Image{}, err
	}
	defer os.RemoveAll(staging)
	files := []struct {
		src  *string
		name string
	}{{&im.RootFS, image.RootFSFile}, {&im.Kernel, "kernel"}, {&im.Initrd, "initrd.img"}}
	for _, f := range files {
		if *f.src == "" {
			continue
		}
		if err := disk.SparseCopy(ctx, *f.src, filepath.Join(staging, f.name)); err != nil {
			return api.Image{}, rpc.Errorf(rpc.CodeFailedPrecondition, "promote %s: %v", name, err)
		}
	}
	if err := image.WriteMeta(staging, image.Meta{Source: store.SourcePromoted, Ref: im.RootFS}); err != nil {
		return api.Image{}, err
	}
	dir, err := is.Commit(staging, name)
	if err != nil {
		return api.Image{}, err
	}
	origin := im.RootFS
	for _, f := range files {
		if *f.src != "" {
			*f.src = filepath.Join(dir, f.name)
		}
	}
	im.Managed, im.Source, im.Dir, im.Ref = true, store.SourcePromoted, dir, origin
	uctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := s.Store.UpdateImage(uctx, im); err != nil {
		return api.Image{}, errors.Join(err, is.Remove(name))
	}
	s.Log.Info("image promoted", "image", name, "dir", dir)
	return s.ShowImage(ctx, name)
}

// reconcileImages removes what image operations interrupted by a daemon
// exit left in the store: staging directories, and an image directory
// renamed into place whose row was never inserted. It runs before any
// operation can.
func (s *Service) reconcileImages(ctx context.Context) {
	is := s.imageStore()
	if err := is.CleanStale(); err != nil {
		s.Log.Warn("removing interrupted image staging directories", "err", err)
	}
	ims, err := s.Store.ListImages(ctx)
	if err != nil {
		s.Log.Warn("listing images", "err", err)
		return
	}
	known := map[string]bool{}
	for _, im := range ims {
		if im.Managed {
			known[filepath.Base(im.Dir)] = true
		}
	}
	left, err := is.Leftovers(known)
	if err != nil {
		s.Log.Warn("reading the image store", "err", err)
	}
	for _, name := range left {
		s.Log.Warn("removing an image directory without an image (an interrupted pull)", "dir", is.Path(name))
		if err := is.Remove(name); err != nil {
			s.Log.Warn("removing an orphaned image directory", "dir", is.Path(name), "err", err)
		}
	}
}

// PruneImageCache removes the cached registry blobs (images already
// pulled do not need them). It is refused while a pull reads the cache.
func (s *Service) PruneImageCache(ctx context.Context, p api.ImageCachePruneParams) (api.ImageCachePruneResult, error) {
	res := api.ImageCachePruneResult{DryRun: p.DryRun}
	if !s.images.blobs.TryLock() {
		return res, rpc.Errorf(rpc.CodeFailedPrecondition, "an image pull is using the blob cache; prune again when it has finished")
	}
	defer s.images.blobs.Unlock()
	dir := filepath.Join(s.blobCacheDir(), "blobs")
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		res.Files++
		res.Bytes += fi.Size()
		if p.DryRun {
			return nil
		}
		return os.Remove(path)
	})
	if err == nil {
		s.Log.Info("image cache pruned", "files", res.Files, "bytes", res.Bytes, "dry_run", p.DryRun)
	}
	return res, err
}
