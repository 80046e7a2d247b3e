package vm

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/recipe"
	"banger/internal/rpc"
	"banger/internal/store"
)

// seedRecipeCache puts a finished build of recipe r into the service's
// recipe cache, as an earlier pull leaves it: a small real ext4, a work
// seed and the manifest.
func seedRecipeCache(t *testing.T, s *Service, r *recipe.Recipe) string {
	t.Helper()
	dir := recipe.CacheDir(s.recipeCacheDir(), r)
	if err := os.MkdirAll(filepath.Join(dir, recipe.SeedDir), 0o755); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, recipe.RootFSFile)
	if err := os.WriteFile(rootfs, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(rootfs, 16<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", rootfs).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, recipe.SeedDir, ".bashrc"), []byte("# bangertest\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(recipe.Manifest{Recipe: r.Name, Hash: r.Hash, ContentBytes: 1234, RootFSBytes: 16 << 20})
	if err := os.WriteFile(filepath.Join(dir, recipe.ManifestFile), m, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".complete"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPullRecipeFromCache: `image pull debian-bookworm` (no catalog bundle
// is published) builds the recipe, here found in the cache, and registers
// it with its work seed; the root filesystem is the cached file, linked.
func TestPullRecipeFromCache(t *testing.T) {
	needE2fsprogs(t)
	s := newTestService(t)
	withPullKernel(t, s)
	r, err := recipe.Get(api.DefaultImageSource)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := recipe.Check(context.Background(), r.Name); err != nil {
		t.Fatalf("this host cannot build recipes (the test suite installs debootstrap and runs as root): %v", err)
	}
	cached := seedRecipeCache(t, s, r)

	op, err := s.PullImage(context.Background(), api.ImagePullParams{Ref: r.Name, Name: api.DefaultImage})
	if err != nil {
		t.Fatal(err)
	}
	final, events := waitOp(t, s, op)
	if final.State != api.OpSucceeded {
		t.Fatalf("pull: %+v", final)
	}
	var names []string
	for _, e := range events {
		if e.State != "running" {
			names = append(names, e.Name+"="+e.State)
		}
	}
	if got := strings.Join(names, " "); got != "recipe: build=skipped recipe: place=done register image=done" {
		t.Fatalf("stages: %s", got)
	}
	im, err := s.Store.GetImage(context.Background(), api.DefaultImage)
	if err != nil {
		t.Fatal(err)
	}
	if im.Source != store.SourceRecipe || im.Ref != r.Name || im.Digest != "recipe:"+r.Hash || im.ContentBytes != 1234 || !im.Managed {
		t.Fatalf("image row: %+v", im)
	}
	if b, err := os.ReadFile(filepath.Join(im.WorkSeed, ".bashrc")); err != nil || string(b) != "# bangertest\n" {
		t.Fatalf("work seed %s: %q %v", im.WorkSeed, b, err)
	}
	var a, b syscall.Stat_t
	if syscall.Stat(im.RootFS, &a) != nil || syscall.Stat(filepath.Join(cached, recipe.RootFSFile), &b) != nil || a.Ino != b.Ino {
		t.Fatalf("the image's rootfs %s is not the cached build linked", im.RootFS)
	}
	if filepath.Base(im.RootFS) != image.RootFSFile {
		t.Fatalf("rootfs %s", im.RootFS)
	}
}

func TestPullBuildFlag(t *testing.T) {
	s := newTestService(t)
	withPullKernel(t, s)
	ctx := context.Background()
	_, err := s.PullImage(ctx, api.ImagePullParams{Ref: "docker.io/library/debian:bookworm", Build: true})
	wantCode(t, err, rpc.CodeInvalidArgument, "--build takes the name of a built-in recipe")
	_, err = s.PullImage(ctx, api.ImagePullParams{Ref: "bangertest-norecipe", Build: true})
	wantCode(t, err, rpc.CodeInvalidArgument, "--build")
	_, err = s.PullImage(ctx, api.ImagePullParams{Ref: api.DefaultImageSource, Build: true, Size: "4GiB"})
	wantCode(t, err, rpc.CodeInvalidArgument, "--size")
	if ims, _ := s.Store.ListImages(ctx); len(ims) != 1 { // the test service's own image
		t.Fatalf("refused pulls left images: %+v", ims)
	}
}

// Without [image] kernel and without a kernel store, pulled images have no
// kernel: refused up front.
func TestPullNeedsAKernel(t *testing.T) {
	s := newTestService(t)
	s.Kernels = nil
	_, err := s.PullImage(context.Background(), api.ImagePullParams{Ref: api.DefaultImageSource})
	wantCode(t, err, rpc.CodeFailedPrecondition, "need a kernel")
}
