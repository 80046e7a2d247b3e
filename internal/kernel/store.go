package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/initrd"
	"banger/internal/kmod"
	"banger/internal/rpc"
	"banger/internal/store"
)

// Stage names reported by Import and Pull.
const (
	StageResolve  = "resolve"
	StageDownload = "download"
	StageUnpack   = "unpack"
	StageCopy     = "copy"
	StageCheck    = "check modules"
	StageModImage = "modules image"
	StageInstall  = "install"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)

// Store is banger's kernel store.
type Store struct {
	Dir string // <state>/kernels
	// DebCache keeps downloaded kernel packages by name and version
	// (<cache>/kernel-debs), so pulling again needs no network.
	DebCache string
	DB       *store.Store
	Log      *slog.Logger
	// CatalogURL replaces the kernel bundle catalog compiled into banger
	// ([kernel] catalog_url); HTTP fetches it and its bundles (nil:
	// http.DefaultClient).
	CatalogURL string
	HTTP       *http.Client

	mu     sync.Mutex // one import, pull or remove at a time
	pullMu sync.Mutex // guards pulls; never held while mu is taken
	pulls  map[string]*flight
	imgMu  sync.Mutex // one lazy modules image build at a time (ModulesImage)
}

// Source is what Import reads: a kernel file and a modules directory, or a
// Debian kernel package (its own kernel unless Kernel is given).
type Source struct {
	Kernel  string
	Modules string
	Deb     string
	Origin  string // recorded as the kernel's source; default from the inputs
}

// Reporter receives stage updates.
type Reporter func(api.Stage)

// step runs fn as a reported stage; detail (what fn says it did) goes
// with the stage's end.
func step(ctx context.Context, report Reporter, name string, fn func() (detail string, err error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	report(api.Stage{Name: name, State: "running"})
	start := time.Now()
	detail, err := fn()
	st := api.Stage{Name: name, State: "done", Detail: detail, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
	if err != nil {
		st.State, st.Detail = "failed", err.Error()
	}
	report(st)
	return err
}

func invalid(format string, a ...any) error {
	return rpc.Errorf(rpc.CodeInvalidParams, format, a...)
}

// ValidName checks a kernel name (a DNS-label-like store name).
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return invalid("kernel name %q: use 1-64 lowercase letters, digits, '.', '_' and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// Import adds a kernel from src under name. An existing kernel of that
// name is an error unless force, which replaces it (images using it then
// boot the new one).
func (s *Store) Import(ctx context.Context, name string, src Source, force bool, report Reporter) (store.Kernel, error) {
	if report == nil {
		report = func(api.Stage) {}
	}
	if err := ValidName(name); err != nil {
		return store.Kernel{}, err
	}
	if src.Deb == "" && (src.Kernel == "" || src.Modules == "") {
		return store.Kernel{}, invalid("give --kernel FILE with --modules DIR, or --deb FILE (a Debian kernel package)")
	}
	if src.Deb != "" && src.Modules != "" {
		return store.Kernel{}, invalid("--modules and --deb exclude each other (the package has its modules)")
	}
	for flag, p := range map[string]string{"--kernel": src.Kernel, "--modules": src.Modules, "--deb": src.Deb} {
		if p != "" && !filepath.IsAbs(p) {
			return store.Kernel{}, invalid("%s %q: give an absolute path (the CLI resolves relative ones)", flag, p)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.importLocked(ctx, name, src, force, report)
}

func (s *Store) importLocked(ctx context.Context, name string, src Source, force bool, report Reporter) (store.Kernel, error) {
	if _, err := s.DB.GetKernel(ctx, name); err == nil && !force {
		return store.Kernel{}, rpc.Errorf(rpc.CodeConflict, "a kernel named %q already exists (use --force to replace it)", name)
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return store.Kernel{}, err
	}
	stage, err := os.MkdirTemp(s.Dir, ".import-"+name+"-")
	if err != nil {
		return store.Kernel{}, err
	}
	defer os.RemoveAll(stage) // after the rename it is gone already

	image, modules := src.Kernel, src.Modules
	if src.Deb != "" {
		if err := step(ctx, report, StageUnpack, func() (string, error) {
			var err error
			var debImage string
			debImage, modules, err = unpackDeb(ctx, src.Deb, filepath.Join(stage, "deb"))
			if image == "" {
				image = debImage
			}
			return "", err
		}); err != nil {
			return store.Kernel{}, err
		}
	}
	k := store.Kernel{Name: name, Source: src.Origin, CreatedAt: time.Now().UTC()}
	if k.Source == "" {
		k.Source = "import " + image
		if src.Deb != "" {
			k.Source = "import " + src.Deb
		}
	}
	out := filepath.Join(stage, "kernel")
	if err := step(ctx, report, StageCopy, func() (string, error) {
		f, err := os.Open(image)
		if err != nil {
			return "", invalid("--kernel: %v", err)
		}
		err = CheckImage(f)
		f.Close()
		if err != nil {
			return "", invalid("--kernel %s: %v", image, err)
		}
		tree, release, err := modulesRelease(modules)
		if err != nil {
			return "", invalid("%v", err)
		}
		if r := BzImageRelease(image); r != "" && r != release {
			return "", invalid("the kernel is %s but the modules are for %s", r, release)
		}
		k.Release = release
		if err := os.MkdirAll(filepath.Join(out, "modules"), 0o755); err != nil {
			return "", err
		}
		n, err := copyFile(image, filepath.Join(out, "vmlinuz"), 0o644)
		if err != nil {
			return "", err
		}
		m, err := copyTree(ctx, tree, filepath.Join(out, "modules", release))
		k.SizeBytes = n + m
		return fmt.Sprintf("release %s, %d MB", release, k.SizeBytes>>20), err
	}); err != nil {
		return store.Kernel{}, err
	}
	if err := step(ctx, report, StageCheck, func() (string, error) {
		t, err := kmod.Open(filepath.Join(out, "modules", k.Release))
		if err == nil {
			_, err = t.Resolve(initrd.GuestModules)
		}
		if err != nil {
			return "", invalid("the modules cannot boot a banger guest: %v", err)
		}
		return "", nil
	}); err != nil {
		return store.Kernel{}, err
	}
	if err := step(ctx, report, StageModImage, func() (string, error) {
		img := filepath.Join(out, ModulesImageFile)
		if err := buildModulesImage(ctx, filepath.Join(out, "modules", k.Release), img); err != nil {
			return "", err
		}
		st, err := os.Stat(img)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d MB used", st.Sys().(*syscall.Stat_t).Blocks*512>>20), nil
	}); err != nil {
		return store.Kernel{}, err
	}
	err = step(ctx, report, StageInstall, func() (string, error) {
		k.Dir = filepath.Join(s.Dir, name)
		var old string
		if _, err := os.Stat(k.Dir); err == nil {
			// Replaced (--force) or left by a crash before its row was written.
			old = filepath.Join(stage, "old")
			if err := os.Rename(k.Dir, old); err != nil {
				return "", err
			}
		}
		if err := os.Rename(out, k.Dir); err != nil {
			if old != "" {
				os.Rename(old, k.Dir)
			}
			return "", err
		}
		if err := s.DB.UpsertKernel(context.WithoutCancel(ctx), k); err != nil {
			os.RemoveAll(k.Dir)
			if old != "" {
				os.Rename(old, k.Dir)
			}
			return "", err
		}
		return "", nil
	})
	if err != nil {
		return store.Kernel{}, err
	}
	s.Log.Info("kernel installed", "kernel", name, "release", k.Release, "source", k.Source)
	return k, nil
}

// pullApt fetches catalog kernel e from the host's apt sources and
// imports it as name.
func (s *Store) pullApt(ctx context.Context, name string, e Entry, force bool, report Reporter) (store.Kernel, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.DB.GetKernel(ctx, name); err == nil && !force {
		return store.Kernel{}, alreadyPulled(name)
	}
	var pkg Package
	var deb string
	if err := step(ctx, report, StageResolve, func() (string, error) {
		concrete, err := resolvePackage(ctx, e.Package)
		if err == nil {
			pkg, err = candidate(ctx, concrete)
		}
		return e.Package + " → " + pkg.Name + " " + pkg.Version, err
	}); err != nil {
		return store.Kernel{}, err
	}
	if err := step(ctx, report, StageDownload, func() (string, error) {
		var cached bool
		var err error
		deb, cached, err = fetch(ctx, pkg, s.DebCache)
		if cached {
			return fmt.Sprintf("cached (%d MB, sha256 verified)", pkg.Size>>20), err
		}
		return fmt.Sprintf("%d MB, sha256 verified", pkg.Size>>20), err
	}); err != nil {
		return store.Kernel{}, err
	}
	return s.importLocked(ctx, name, Source{Deb: deb, Origin: fmt.Sprintf("pull %s %s", pkg.Name, pkg.Version)}, true, report)
}

// Remove deletes a kernel; refused while an image uses it.
func (s *Store) Remove(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.DB.GetKernel(ctx, name)
	if err != nil {
		return notFound(err, name)
	}
	users, err := s.DB.ImagesUsingKernel(ctx, name)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return rpc.Errorf(rpc.CodeFailedPrecondition, "kernel %s is used by image(s) %v; delete them first", name, users)
	}
	if err := s.DB.DeleteKernel(ctx, name); err != nil {
		return err
	}
	if err := os.RemoveAll(k.Dir); err != nil {
		return fmt.Errorf("kernel %s removed from the store but its files remain in %s: %w", name, k.Dir, err)
	}
	s.Log.Info("kernel removed", "kernel", name)
	return nil
}

func notFound(err error, name string) error {
	if errors.Is(err, store.ErrNotFound) {
		return rpc.Errorf(rpc.CodeNotFound, "no kernel named %q (see `banger kernel list`)", name)
	}
	return err
}

// Get returns the named kernel.
func (s *Store) Get(ctx context.Context, name string) (store.Kernel, error) {
	k, err := s.DB.GetKernel(ctx, name)
	return k, notFound(err, name)
}

// Image returns the path of a kernel's image.
func Image(k store.Kernel) string { return filepath.Join(k.Dir, "vmlinuz") }

// Modules returns the path of a kernel's modules tree.
func Modules(k store.Kernel) string { return filepath.Join(k.Dir, "modules", k.Release) }

// Initramfs returns banger's initramfs for k with the given init and agent
// binaries, generated into cacheDir when not cached.
func Initramfs(k store.Kernel, cacheDir, init, agent string) (string, error) {
	return initrd.Build(cacheDir, initrd.Spec{Init: init, Agent: agent, Modules: Modules(k), Release: k.Release})
}

// view is the API form of k.
func (s *Store) view(ctx context.Context, k store.Kernel) (api.Kernel, error) {
	users, err := s.DB.ImagesUsingKernel(ctx, k.Name)
	return api.Kernel{Name: k.Name, Release: k.Release, Kernel: Image(k), Modules: Modules(k), Source: k.Source,
		SizeBytes: k.SizeBytes, CreatedAt: k.CreatedAt, UsedBy: users}, err
}

// Show returns one kernel with the images using it.
func (s *Store) Show(ctx context.Context, name string) (api.Kernel, error) {
	k, err := s.Get(ctx, name)
	if err != nil {
		return api.Kernel{}, err
	}
	return s.view(ctx, k)
}

// List returns every kernel in the store.
func (s *Store) List(ctx context.Context) ([]api.Kernel, error) {
	ks, err := s.DB.ListKernels(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Kernel, 0, len(ks))
	for _, k := range ks {
		v, err := s.view(ctx, k)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
