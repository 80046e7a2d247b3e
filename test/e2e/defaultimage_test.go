package e2e

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/recipe"
)

// defaultImage returns the directory of the debian-bookworm recipe's image:
// BANGER_TEST_DEFAULT_IMAGE, or built once per recipe hash under
// /var/cache/banger-test or BANGER_TEST_CACHE (as
// test/fixture/build-default-image does).
func defaultImage(t *testing.T, r *recipe.Recipe) string {
	if d := os.Getenv("BANGER_TEST_DEFAULT_IMAGE"); d != "" {
		return d
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cache := os.Getenv("BANGER_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/banger-test"
	}
	dir, built, err := recipe.BuildCached(ctx, r, cache, recipe.Options{Mirror: os.Getenv("BANGER_DEBIAN_MIRROR")},
		func(name string, fn func() error) error {
			t0 := time.Now()
			err := fn()
			t.Logf("recipe build: %s: %.1f s", name, time.Since(t0).Seconds())
			return err
		})
	if err != nil {
		t.Fatalf("building the %s recipe: %v", r.Name, err)
	}
	t.Logf("default image %s (built now: %v)", dir, built)
	return dir
}

// TestDefaultImage boots the debian-bookworm recipe's image (registered
// with the fixture's kernel from the store, booted through banger's
// initramfs):
// the recipe's tools are there, its /root dotfiles appear in the new VM's
// /root (the work disk is seeded from the image's /root), banger's guest
// files are in place and no unit failed at boot.
func TestDefaultImage(t *testing.T) {
	t.Parallel()
	r, err := recipe.Get("debian-bookworm")
	if err != nil {
		t.Fatal(err)
	}
	dir := defaultImage(t, r)
	e := newEnv(t, envOpts{})
	e.importKernel()
	e.must("image", "register", "--name", r.Name, "--rootfs", filepath.Join(dir, recipe.RootFSFile),
		"--kernel-name", fixtureKernel)

	start := time.Now()
	e.must("vm", "create", "--image", r.Name, "--name", "dev")
	t.Logf("vm create (boot to SSH) of %s: %.1f s", r.Name, time.Since(start).Seconds())

	out := e.ssh("dev", "sh", "-c", "for t in git curl make gcc tmux jq docker ssh sudo rsync python3; do command -v $t || echo missing $t; done")
	if strings.Contains(out, "missing") {
		t.Fatalf("tools missing from %s:\n%s", r.Name, out)
	}
	// Every dotfile of the recipe, byte for byte, in the VM's /root (the
	// work disk), next to banger's authorized_keys.
	err = fs.WalkDir(r.Root, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		want, err := fs.ReadFile(r.Root, p)
		if err != nil {
			return err
		}
		if got := e.ssh("dev", "cat", "/root/"+p); got != string(want) {
			t.Errorf("/root/%s in the VM:\n%q\nwant (recipe):\n%q", p, got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.ssh("dev", "sh", "-c", "findmnt -no SOURCE /root; stat -c %a /root; test -s /root/.ssh/authorized_keys && echo keys; git config --global init.defaultBranch"); got != "/dev/vdb\n700\nkeys\nmain\n" {
		t.Errorf("work disk on /root with the seed and banger's key: got %q", got)
	}
	if got := e.ssh("dev", "sh", "-c", "systemctl is-enabled docker.socket docker.service ssh.service; cat /etc/motd | grep -c banger"); got != "enabled\ndisabled\nenabled\n1\n" {
		t.Errorf("units and motd: got %q", got)
	}
	if failed := e.ssh("dev", "systemctl", "--failed", "--no-legend", "--plain"); strings.TrimSpace(failed) != "" {
		t.Errorf("units failed at boot of %s:\n%s", r.Name, failed)
	}
}
