package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"banger/internal/api"
)

// The fixture's kernel, written as a bundle by `kernel bundle`, is served
// with a kernel catalog from inside the scenario's namespace; `kernel pull`
// fetches it through [kernel] catalog_url, and a VM boots with it.
func TestKernelBundle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	var body, catalog atomic.Pointer[[]byte]
	var downloads atomic.Int64
	srv := e.serveInNS(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/kernels.json":
			w.Write(*catalog.Load())
		case "/bangertest-kb.tar.zst":
			downloads.Add(1)
			w.Write(*body.Load())
		default:
			http.NotFound(w, r)
		}
	}))
	e.appendConfig(fmt.Sprintf("\n[kernel]\ncatalog_url = %q\n", srv.URL+"/kernels.json"))

	e.importKernel()
	out := filepath.Join(e.home, "fixture-kernel.tar.zst")
	start := time.Now()
	var made struct {
		Name, File, SHA256 string
		Size               int64
	}
	if err := json.Unmarshal([]byte(e.must("kernel", "bundle", fixtureKernel, "-o", out, "--json")), &made); err != nil {
		t.Fatal(err)
	}
	bundleTime := time.Since(start)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if made.Name != fixtureKernel || made.File != out || made.SHA256 != hex.EncodeToString(sum[:]) || made.Size != int64(len(b)) {
		t.Fatalf("kernel bundle printed %+v; the file is %x, %d bytes", made, sum, len(b))
	}
	if r := e.run("kernel", "bundle", fixtureKernel, "-o", out); r.code == 0 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("kernel bundle over an existing file: exit %d %s", r.code, r.stderr)
	}
	body.Store(&b)
	cat, _ := json.Marshal(map[string]any{"entries": []map[string]any{{
		"name": "bangertest-kb", "description": "the fixture's kernel", "url": srv.URL + "/bangertest-kb.tar.zst",
		"sha256": made.SHA256, "size": made.Size,
	}}})
	catalog.Store(&cat)

	var av []api.KernelAvailable
	if err := json.Unmarshal([]byte(e.must("kernel", "list", "--available", "--json")), &av); err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, a := range av {
		listed = listed || (a.Name == "bangertest-kb" && a.Bundle == srv.URL+"/bangertest-kb.tar.zst" && !a.Pulled)
	}
	if !listed {
		t.Fatalf("kernel list --available: %+v", av)
	}

	start = time.Now()
	r := e.run("kernel", "pull", "bangertest-kb")
	if r.code != 0 {
		t.Fatalf("kernel pull: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	pullTime := time.Since(start)
	for _, st := range []string{"download bundle", "unpack bundle", "copy", "check modules", "install"} {
		assertContains(t, "pull progress", r.stderr, st)
	}
	var k api.Kernel
	if err := json.Unmarshal([]byte(e.must("kernel", "show", "--json", "bangertest-kb")), &k); err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel bundle: %d bytes in %v; kernel pull of it: %v (kernel + modules: %d bytes)",
		made.Size, bundleTime.Round(time.Millisecond), pullTime.Round(time.Millisecond), k.SizeBytes)
	release, _ := os.ReadFile(filepath.Join(guestDir, "kernel-release"))
	if k.Release != strings.TrimSpace(string(release)) || !strings.HasPrefix(k.Source, "bundle "+srv.URL) {
		t.Fatalf("pulled kernel: %+v", k)
	}
	if n := downloads.Load(); n != 1 {
		t.Fatalf("%d bundle downloads, want 1", n)
	}
	if left, _ := filepath.Glob(filepath.Join(e.stateDir(), "kernels", ".*")); len(left) != 0 {
		t.Fatalf("staging left behind: %v", left)
	}

	e.must("image", "register", "--name", "default", "--rootfs", filepath.Join(guestDir, "rootfs.ext4"), "--kernel-name", "bangertest-kb")
	e.must("vm", "create", "--name", "kb")
	if got := strings.TrimSpace(e.must("vm", "exec", "kb", "--", "uname", "-r")); got != k.Release {
		t.Fatalf("guest runs %q, want the bundled %s", got, k.Release)
	}
	e.must("vm", "delete", "--force", "kb")
	e.must("image", "delete", "default")
	e.must("kernel", "rm", "bangertest-kb")
}
