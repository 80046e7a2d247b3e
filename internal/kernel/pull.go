package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/rpc"
	"banger/internal/store"
)

// Stage names of a bundle pull (then those of Import).
const (
	StageDownloadBundle = "download bundle"
	StageUnpackBundle   = "unpack bundle"
)

// flight is one running pull; pulls of the same name join it. It runs on
// its own context, canceled when every caller has gone.
type flight struct {
	done    chan struct{}
	cancel  context.CancelFunc
	reports map[int]Reporter // the callers waiting, by join order; guarded by Store.pullMu
	joined  int
	k       store.Kernel
	err     error
}

func alreadyPulled(name string) error {
	return rpc.Errorf(rpc.CodeConflict, "kernel %q is already pulled (use --force to fetch it again)", name)
}

// Pull fetches a catalog kernel (default DefaultName): its bundle when the
// bundle catalog ([kernel] catalog_url, else the embedded one) lists it,
// downloaded and verified (size and sha256) before it is unpacked; else, or
// when the download fails, the Debian package its Entry names, from the
// host's apt sources. Concurrent pulls of one name run once: later callers
// follow the first (its stages from when they join) and get its result; a
// caller that is canceled stops waiting, and the pull stops when none is
// left.
func (s *Store) Pull(ctx context.Context, name string, force bool, report Reporter) (store.Kernel, error) {
	if report == nil {
		report = func(api.Stage) {}
	}
	if name == "" {
		name = DefaultName
	}
	if err := ValidName(name); err != nil {
		return store.Kernel{}, err
	}
	s.pullMu.Lock()
	f, ok := s.pulls[name]
	if ok {
		s.Log.Info("joining the running kernel pull", "kernel", name)
	} else {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel, reports: map[int]Reporter{}}
		if s.pulls == nil {
			s.pulls = map[string]*flight{}
		}
		s.pulls[name] = f
		go func() {
			k, err := s.pull(fctx, name, force, func(st api.Stage) {
				s.pullMu.Lock()
				rs := make([]Reporter, 0, len(f.reports))
				for i := range f.joined {
					if r, ok := f.reports[i]; ok {
						rs = append(rs, r)
					}
				}
				s.pullMu.Unlock()
				for _, r := range rs {
					r(st)
				}
			})
			s.pullMu.Lock()
			if s.pulls[name] == f {
				delete(s.pulls, name)
			}
			f.k, f.err = k, err
			s.pullMu.Unlock()
			cancel()
			close(f.done)
		}()
	}
	id := f.joined
	f.reports[id] = report
	f.joined++
	s.pullMu.Unlock()
	select {
	case <-f.done:
		return f.k, f.err
	case <-ctx.Done():
	}
	s.pullMu.Lock()
	delete(f.reports, id)
	last := len(f.reports) == 0
	if last && s.pulls[name] == f {
		delete(s.pulls, name) // a later pull starts afresh
	}
	s.pullMu.Unlock()
	if last { // the pull stops; it has cleaned up when done closes
		f.cancel()
		<-f.done
	}
	return store.Kernel{}, ctx.Err()
}

func (s *Store) pull(ctx context.Context, name string, force bool, report Reporter) (store.Kernel, error) {
	apt, hasApt := Lookup(name)
	cat, catErr := s.bundleCatalog(ctx)
	b, hasBundle := cat.Lookup(name)
	if catErr != nil && !hasApt {
		return store.Kernel{}, catErr
	}
	if !hasBundle && !hasApt {
		return store.Kernel{}, rpc.Errorf(rpc.CodeNotFound, "no kernel %q in the catalog (see `banger kernel list --available`)", name)
	}
	if _, err := s.DB.GetKernel(ctx, name); err == nil && !force {
		return store.Kernel{}, alreadyPulled(name)
	}
	if hasBundle {
		k, err := s.pullBundle(ctx, name, b, force, report)
		var dl *downloadError
		if err == nil || !hasApt || !errors.As(err, &dl) || ctx.Err() != nil {
			return k, err
		}
		s.Log.Warn("kernel bundle unavailable; pulling the Debian package instead", "kernel", name, "err", err)
	} else if catErr != nil {
		s.Log.Warn("kernel catalog unavailable; pulling the Debian package instead", "kernel", name, "err", catErr)
		report(api.Stage{Name: StageDownloadBundle, State: "skipped", Detail: catErr.Error() + "; pulling the Debian package"})
	}
	return s.pullApt(ctx, name, apt, force, report)
}

// downloadError marks a failed bundle download (the apt fallback's cue).
type downloadError struct{ err error }

func (e *downloadError) Error() string { return e.err.Error() }
func (e *downloadError) Unwrap() error { return e.err }

func (s *Store) client() *http.Client {
	if s.HTTP != nil {
		return s.HTTP
	}
	return http.DefaultClient
}

// bundleCatalog is the kernel bundle catalog in force.
func (s *Store) bundleCatalog(ctx context.Context) (image.Catalog, error) {
	if s.CatalogURL != "" {
		c, err := image.Fetch(ctx, s.client(), s.CatalogURL)
		if err != nil {
			return c, rpc.Errorf(rpc.CodeUnavailable, "kernel catalog ([kernel] catalog_url): %v", err)
		}
		return c, nil
	}
	return image.Embedded(image.CatalogKernels)
}

// pullBundle downloads, verifies and unpacks bundle e in a staging
// directory inside the store, then imports it as name; the staging
// directory is removed whatever happens.
func (s *Store) pullBundle(ctx context.Context, name string, e image.CatalogEntry, force bool, report Reporter) (store.Kernel, error) {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return store.Kernel{}, err
	}
	stage, err := os.MkdirTemp(s.Dir, ".pull-"+name+"-")
	if err != nil {
		return store.Kernel{}, err
	}
	defer os.RemoveAll(stage)
	file := filepath.Join(stage, "bundle.tar.zst")
	if err := step(ctx, report, StageDownloadBundle, func() (string, error) {
		err := image.Download(ctx, s.client(), e, file, func(done, total int64) {
			report(api.Stage{Name: StageDownloadBundle, State: "running", Bytes: done, Total: total, Detail: e.Name})
		})
		if err != nil {
			return "", &downloadError{err}
		}
		return fmt.Sprintf("%d MB, sha256 verified", e.Size>>20), nil
	}); err != nil {
		return store.Kernel{}, err
	}
	tree := filepath.Join(stage, "tree")
	var m BundleManifest
	if err := step(ctx, report, StageUnpackBundle, func() (string, error) {
		var err error
		if m, err = UnpackBundle(ctx, file, tree); err != nil {
			return "", err
		}
		return fmt.Sprintf("release %s, %d files", m.Release, len(m.Files)), os.Remove(file)
	}); err != nil {
		return store.Kernel{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.importLocked(ctx, name, Source{
		Kernel:  filepath.Join(tree, bundleKernel),
		Modules: filepath.Join(tree, bundleModules, m.Release),
		Origin:  fmt.Sprintf("bundle %s sha256:%s", e.URL, e.SHA256),
	}, force, report)
}

// Available lists the kernels `kernel pull` knows: the bundle catalog's
// and the Debian packages', saying which are pulled.
func (s *Store) Available(ctx context.Context) ([]api.KernelAvailable, error) {
	cat, err := s.bundleCatalog(ctx)
	if err != nil {
		return nil, err
	}
	byName := map[string]*api.KernelAvailable{}
	for _, e := range Catalog {
		byName[e.Name] = &api.KernelAvailable{Name: e.Name, Package: e.Package, Description: e.Description}
	}
	for _, e := range cat.Entries {
		a, ok := byName[e.Name]
		if !ok {
			a = &api.KernelAvailable{Name: e.Name, Description: e.Description}
			byName[e.Name] = a
		}
		a.Bundle = e.URL
	}
	out := make([]api.KernelAvailable, 0, len(byName))
	for _, a := range byName {
		_, err := s.DB.GetKernel(ctx, a.Name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		a.Pulled = err == nil
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
