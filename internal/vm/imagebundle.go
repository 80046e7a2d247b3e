package vm

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/recipe"
	"banger/internal/rpc"
	"banger/internal/store"
)

// Stage names of a catalog pull, in order (then StageRegister).
const (
	StageDownloadBundle = "download bundle"
	StageUnpackBundle   = "unpack bundle"
)

// isPlainName says whether a pull argument can be a catalog name rather
// than a registry reference (no registry, path, tag or digest).
func isPlainName(ref string) bool { return !strings.ContainsAny(ref, "/:@") }

// imageCatalog is the catalog in force: [image] catalog_url when set, else
// the one compiled in.
func (s *Service) imageCatalog(ctx context.Context) (image.Catalog, error) {
	if u := s.Config.Image.CatalogURL; u != "" {
		c, err := image.Fetch(ctx, http.DefaultClient, u)
		if err != nil {
			return c, rpc.Errorf(rpc.CodeUnavailable, "image catalog ([image] catalog_url): %v", err)
		}
		return c, nil
	}
	return image.Embedded(image.CatalogImages)
}

// pullBundle begins the pull of a catalog entry, or joins the pull of the
// same entry already running: concurrent pulls of one name download once
// and every caller follows the same operation.
func (s *Service) pullBundle(ctx context.Context, e image.CatalogEntry, p api.ImagePullParams) (api.Op, error) {
	if p.Size != "" {
		return api.Op{}, invalid("--size applies to registry pulls; catalog image %s has a fixed size", e.Name)
	}
	name, err := pullName(p.Name, e.Name)
	if err != nil {
		return api.Op{}, err
	}
	bk, err := s.pullKernel(ctx)
	if err != nil {
		return api.Op{}, err
	}
	s.reserve.Lock()
	defer s.reserve.Unlock()
	if id, ok := s.images.bundlePulls[name]; ok {
		if o, err := s.ops.get(id); err == nil {
			s.Log.Info("joining the running pull", "image", name, "op", id)
			return o.snapshot(), nil
		}
	}
	if err := s.claimImage(ctx, name); err != nil {
		return api.Op{}, err
	}
	s.Log.Info("catalog pull begins", "image", name, "bundle", e.URL)
	// Begun under s.reserve, so the operation's own release (which takes
	// it) runs only after its id is recorded.
	op := s.ops.beginOp(api.Op{Kind: api.MethodImagePull, Image: name}, func(ctx context.Context, report Reporter) error {
		defer func() {
			s.reserve.Lock()
			delete(s.images.bundlePulls, name)
			delete(s.images.busy, name)
			s.reserve.Unlock()
		}()
		return s.runBundlePull(ctx, name, e, bk, report)
	})
	if s.images.bundlePulls == nil {
		s.images.bundlePulls = map[string]string{}
	}
	s.images.bundlePulls[name] = op.ID
	return op, nil
}

func (s *Service) runBundlePull(ctx context.Context, name string, e image.CatalogEntry, bk bootKernel, report Reporter) error {
	st := newStages(name, s.Log, report)
	err := s.inStaging(name, func(staging string) error {
		return s.buildBundle(ctx, staging, name, e, bk, st)
	})
	// The catalog host may be unreachable (offline, or no bundle published
	// yet): an image with a recipe is then built from the host's Debian
	// package source instead.
	var dl *downloadError
	if errors.As(err, &dl) && ctx.Err() == nil {
		if r, rerr := recipe.Get(e.Name); rerr == nil {
			s.Log.Warn("catalog bundle unavailable; building the image from its recipe", "image", name, "err", dl.err)
			st.note("bundle unavailable (" + dl.err.Error() + "); building from the recipe")
			return s.inStaging(name, func(staging string) error {
				return s.buildRecipe(ctx, staging, name, r, bk, st)
			})
		}
	}
	return err
}

// downloadError marks a failed bundle download (the recipe fallback's cue).
type downloadError struct{ err error }

func (e *downloadError) Error() string { return e.err.Error() }
func (e *downloadError) Unwrap() error { return e.err }

func (s *Service) buildBundle(ctx context.Context, staging, name string, e image.CatalogEntry, bk bootKernel, st *stages) error {
	if err := s.ensureKernel(ctx, &bk, st); err != nil {
		return err
	}
	bundle := filepath.Join(staging, "bundle.tar.zst")
	if err := st.run(ctx, StageDownloadBundle, func() error {
		if err := image.Download(ctx, http.DefaultClient, e, bundle, func(done, total int64) {
			st.progress(StageDownloadBundle, done, total, e.Name)
		}); err != nil {
			return &downloadError{err}
		}
		return nil
	}); err != nil {
		return err
	}
	var m image.BundleManifest
	if err := st.run(ctx, StageUnpackBundle, func() error {
		var err error
		if m, err = image.Unpack(ctx, bundle, staging); err != nil {
			return err
		}
		if m.WorkSeed {
			if err := image.ExtractSeed(ctx, staging); err != nil {
				return err
			}
		}
		return os.Remove(bundle)
	}); err != nil {
		return err
	}
	return st.run(ctx, StageRegister, func() error {
		fi, err := os.Stat(filepath.Join(staging, image.RootFSFile))
		if err != nil {
			return err
		}
		if err := image.WriteMeta(staging, image.Meta{Source: store.SourceCatalog, Ref: e.Name, Name: e.URL, Digest: "sha256:" + e.SHA256}); err != nil {
			return err
		}
		im := store.Image{Name: name, Kernel: bk.Kernel, Initrd: bk.Initrd, Managed: true, SizeBytes: fi.Size(),
			CreatedAt: nowUTC(), Source: store.SourceCatalog, Ref: e.Name, Digest: "sha256:" + e.SHA256,
			ContentBytes: m.ContentBytes}
		if m.WorkSeed {
			im.WorkSeed = image.SeedDir // made absolute by commitImage
		}
		return s.commitImage(staging, im, bk.Name)
	})
}
