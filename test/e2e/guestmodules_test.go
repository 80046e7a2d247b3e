package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/recipe"
	"banger/internal/testutil/ocitest"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestDefaultImageRunsDocker boots the default image (debian-bookworm
// recipe, docker.io with docker.socket enabled) on the Debian cloud kernel
// from the kernel store, as `vm run` does on a fresh installation: the
// kernel's modules are mounted read-only on /lib/modules/RELEASE from the
// modules image drive, so modprobe finds overlay, br_netfilter and veth,
// dockerd starts (its bridge and iptables need modules too) and runs a
// container — a busybox image built here and imported with `docker load`,
// no network needed — on the default bridge network.
func TestDefaultImageRunsDocker(t *testing.T) {
	t.Parallel()
	r, err := recipe.Get(api.DefaultImageSource)
	if err != nil {
		t.Fatal(err)
	}
	dir := defaultImage(t, r)
	e := newEnv(t, envOpts{})
	seedKernelDeb(t, e)
	e.must("kernel", "pull")
	e.must("image", "register", "--name", "dock", "--rootfs", filepath.Join(dir, recipe.RootFSFile), "--kernel-name", kernel.DefaultName)
	start := time.Now()
	e.must("vm", "create", "--image", "dock", "--name", "dock")
	t.Logf("vm create (store kernel + modules image): %.1f s", time.Since(start).Seconds())

	// Mounted read-only from the third drive; the image's root untouched otherwise.
	if got := e.ssh("dock", "sh", "-c", "findmnt -no SOURCE,OPTIONS /lib/modules/$(uname -r) | cut -d, -f1; test -e /lib/modules/$(uname -r)/modules.dep && echo dep"); got != "/dev/vdc ro\ndep\n" {
		t.Fatalf("modules mount: got %q", got)
	}
	out := e.ssh("dock", "sh", "-c", "modprobe -a overlay br_netfilter veth && lsmod | cut -d' ' -f1 | sort")
	for _, m := range []string{"overlay", "br_netfilter", "bridge", "veth"} {
		if !strings.Contains("\n"+out, "\n"+m+"\n") {
			t.Errorf("module %s not loaded after modprobe; lsmod:\n%s", m, out)
		}
	}
	if got := e.ssh("dock", "docker", "info", "--format", "{{.ServerVersion}} {{.Driver}}"); !strings.HasSuffix(strings.TrimSpace(got), " overlay2") {
		t.Fatalf("docker info (daemon through docker.socket): %q", got)
	}
	if st := e.ssh("dock", "systemctl", "is-active", "docker.service"); st != "active\n" {
		t.Fatalf("docker.service: %q", st)
	}

	// An image of one static busybox, saved as a `docker load` archive.
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("the host's static /bin/busybox (busybox-static) builds the test container: %v", err)
	}
	layer := ocitest.BytesLayer(t, ocitest.Tar(t, ocitest.Dir("bin", 0o755), ocitest.File("bin/busybox", 0o755, string(bb))))
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64",
		Config: v1.Config{Entrypoint: []string{"/bin/busybox"}}})
	if err == nil {
		img, err = mutate.AppendLayers(img, layer)
	}
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag("banger-test/bb:1")
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "bb.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	load := e.cmd("vm", "ssh", "dock", "--", "docker", "load")
	load.Stdin = f
	if b, err := load.CombinedOutput(); err != nil || !strings.Contains(string(b), "banger-test/bb:1") {
		t.Fatalf("docker load: %v\n%s", err, b)
	}
	// Default bridge network: docker0, a veth pair, iptables NAT.
	got := e.ssh("dock", "docker", "run", "--rm", "banger-test/bb:1", "sh", "-c", "echo hello-from-container; /bin/busybox ip -4 -o addr show eth0")
	if !strings.HasPrefix(got, "hello-from-container\n") || !strings.Contains(got, "eth0") {
		t.Fatalf("docker run: %q", got)
	}
}
