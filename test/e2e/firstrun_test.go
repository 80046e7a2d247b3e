package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/recipe"
)

// TestFirstRunPullsTheDefaultImage: on a fresh installation `vm run` with
// no --image gets the default image itself: the Debian cloud kernel through
// the host's apt sources and the debian-bookworm recipe (no catalog bundle
// is published), with progress, then boots it and runs the command. The
// scenario's namespace has no route to the Debian mirror, so the kernel
// package and the recipe build are put in the daemon's caches first, as an
// earlier pull on the host leaves them.
func TestFirstRunPullsTheDefaultImage(t *testing.T) {
	t.Parallel()
	r, err := recipe.Get(api.DefaultImageSource)
	if err != nil {
		t.Fatal(err)
	}
	built := defaultImage(t, r)
	e := newEnv(t, envOpts{})
	seedKernelDeb(t, e)
	cache := recipe.CacheDir(filepath.Join(e.home, "cache/banger/recipes"), r)
	if out, err := exec.Command("mkdir", "-p", filepath.Dir(cache)).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	// Hard links: the cached build is never written in place.
	if out, err := exec.Command("cp", "-a", "--link", built, cache).CombinedOutput(); err != nil {
		exec.Command("rm", "-rf", cache).Run()
		if out2, err := exec.Command("cp", "-a", "--sparse=always", built, cache).CombinedOutput(); err != nil {
			t.Fatalf("cp --link: %s; cp: %v %s", out, err, out2)
		}
	}

	res := e.run("vm", "run", "--rm", "--name", "first", "--", "sh", "-c",
		"for t in git curl make gcc tmux jq docker; do command -v $t >/dev/null || echo missing $t; done; uname -r; ls -a /root")
	if res.code != 0 {
		t.Fatalf("vm run on a fresh installation: exit %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, lastLines(res.stderr, 40))
	}
	for _, want := range []string{"no default image yet", "kernel: download", "recipe: place", "register image"} {
		assertContains(t, "vm run's progress", res.stderr, want)
	}
	if strings.Contains(res.stdout, "missing") || !strings.Contains(res.stdout, "cloud-amd64") || !strings.Contains(res.stdout, ".bashrc") {
		t.Fatalf("the default image lacks a tool, the kernel or its /root dotfiles:\n%s", res.stdout)
	}
	var im api.Image
	if err := json.Unmarshal([]byte(e.must("image", "show", "--json", api.DefaultImage)), &im); err != nil {
		t.Fatal(err)
	}
	if im.Source != "recipe" || im.Ref != api.DefaultImageSource || im.KernelName != "debian-cloud" {
		t.Fatalf("default image: %+v", im)
	}
	// Later runs find it.
	res = e.run("vm", "run", "--rm", "--name", "second", "--", "true")
	if res.code != 0 || strings.Contains(res.stderr, "no default image yet") {
		t.Fatalf("second vm run: exit %d\n%s", res.code, lastLines(res.stderr, 20))
	}
}
