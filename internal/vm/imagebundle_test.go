package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/rpc"
	"banger/internal/store"
)

// catalogServer serves a catalog and bundles on 127.0.0.1 and counts
// bundle downloads.
type catalogServer struct {
	srv       *httptest.Server
	mu        sync.Mutex
	files     map[string][]byte // path -> body
	downloads atomic.Int32
	gate      chan struct{} // when set, bundle responses wait for it to close
}

func newCatalogServer(t *testing.T) *catalogServer {
	cs := &catalogServer{files: map[string][]byte{}}
	cs.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs.mu.Lock()
		body, ok := cs.files[r.URL.Path]
		gate := cs.gate
		cs.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		if strings.HasSuffix(r.URL.Path, ".tar.zst") {
			cs.downloads.Add(1)
			if gate != nil {
				<-gate
			}
		}
		w.Write(body)
	}))
	t.Cleanup(cs.srv.Close)
	return cs
}

func (cs *catalogServer) put(path string, b []byte) string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.files[path] = b
	return cs.srv.URL + path
}

// makeBundle builds a real bundle: a small ext4 with a work seed.
func makeBundle(t *testing.T) (bundle []byte, sum string) {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	f, _ := os.Create(rootfs)
	f.Truncate(32 << 20)
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", rootfs).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	seed := filepath.Join(dir, "seed")
	os.MkdirAll(filepath.Join(seed, ".config"), 0o755)
	os.WriteFile(filepath.Join(seed, ".bashrc"), []byte("# seeded\n"), 0o644)
	out := filepath.Join(dir, "b.tar.zst")
	s, n, err := image.WriteBundle(context.Background(), out, image.BundleManifest{Name: "bangertest-cat", ContentBytes: 42}, rootfs, seed)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil || int64(len(b)) != n {
		t.Fatalf("bundle: %d bytes read, %d reported, %v", len(b), n, err)
	}
	h := sha256.Sum256(b)
	if hex.EncodeToString(h[:]) != s {
		t.Fatalf("WriteBundle sha256 %s does not match the file", s)
	}
	return b, s
}

func (cs *catalogServer) catalog(t *testing.T, entries ...image.CatalogEntry) string {
	t.Helper()
	b, err := json.Marshal(image.Catalog{Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	return cs.put("/catalog.json", b)
}

func TestPullCatalogBundle(t *testing.T) {
	needE2fsprogs(t)
	s := newTestService(t)
	withPullKernel(t, s)
	cs := newCatalogServer(t)
	bundle, sum := makeBundle(t)
	good := image.CatalogEntry{Name: "bangertest-cat", Description: "test", URL: cs.put("/good.tar.zst", bundle), SHA256: sum, Size: int64(len(bundle))}
	badSum := good
	badSum.Name, badSum.SHA256 = "bangertest-badsum", strings.Repeat("0", 64)
	trunc := good
	trunc.Name, trunc.URL = "bangertest-trunc", cs.put("/trunc.tar.zst", bundle[:len(bundle)/2])
	s.Config.Image.CatalogURL = cs.catalog(t, good, badSum, trunc)
	ctx := context.Background()

	for _, c := range []struct{ name, want string }{
		{"bangertest-badsum", "sha256"},
		{"bangertest-trunc", "truncated"},
	} {
		op, err := s.PullImage(ctx, api.ImagePullParams{Ref: c.name})
		if err != nil {
			t.Fatal(err)
		}
		final, _ := waitOp(t, s, op)
		if final.State != api.OpFailed || !strings.Contains(final.Error, c.want) {
			t.Errorf("%s: %s %q, want failed mentioning %q", c.name, final.State, final.Error, c.want)
		}
		if _, err := s.Store.GetImage(ctx, c.name); err == nil {
			t.Errorf("%s: a refused bundle left its row", c.name)
		}
		if got := imagesDirEntries(t, s); len(got) != 0 {
			t.Errorf("%s: refused bundle left %v", c.name, got)
		}
	}

	// Two pulls of one name at once: one download, one operation, one image.
	cs.downloads.Store(0)
	gate := make(chan struct{})
	cs.mu.Lock()
	cs.gate = gate
	cs.mu.Unlock()
	op1, err := s.PullImage(ctx, api.ImagePullParams{Ref: "bangertest-cat"})
	if err != nil {
		t.Fatal(err)
	}
	op2, err := s.PullImage(ctx, api.ImagePullParams{Ref: "bangertest-cat"})
	if err != nil {
		t.Fatal(err)
	}
	if op1.ID != op2.ID {
		t.Errorf("concurrent pulls got operations %s and %s; want the second to join the first", op1.ID, op2.ID)
	}
	close(gate)
	var wg sync.WaitGroup
	finals := make([]api.Op, 2)
	for i, op := range []api.Op{op1, op2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			finals[i], _ = s.OpWait(wctx, op.ID, func(api.Stage) {})
		}()
	}
	wg.Wait()
	for i, f := range finals {
		if f.State != api.OpSucceeded {
			t.Fatalf("caller %d: %s %s", i+1, f.State, f.Error)
		}
	}
	if n := cs.downloads.Load(); n != 1 {
		t.Errorf("%d bundle downloads, want 1", n)
	}
	im, err := s.ShowImage(ctx, "bangertest-cat")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.Paths.ImagesDir(), "bangertest-cat")
	if im.Source != store.SourceCatalog || im.Digest != "sha256:"+sum || im.Ref != "bangertest-cat" || im.Dir != dir || im.ContentBytes != 42 {
		t.Errorf("catalog image = %+v", im)
	}
	row, _ := s.Store.GetImage(ctx, "bangertest-cat")
	if b, err := os.ReadFile(filepath.Join(row.WorkSeed, ".bashrc")); err != nil || string(b) != "# seeded\n" {
		t.Errorf("work seed %s: %q %v", row.WorkSeed, b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bundle.tar.zst")); !os.IsNotExist(err) {
		t.Errorf("the downloaded bundle was kept: %v", err)
	}
	// After it finished, another pull of the name is a conflict.
	_, err = s.PullImage(ctx, api.ImagePullParams{Ref: "bangertest-cat"})
	wantCode(t, err, rpc.CodeConflict, "already exists")
	// A plain name not in the catalog is tried as a registry reference.
	_, err = s.PullImage(ctx, api.ImagePullParams{Ref: "bangertest-cat", Size: "1G"})
	wantCode(t, err, rpc.CodeInvalidArgument, "--size")
}

// An unreachable catalog URL is a clear error for plain names.
func TestPullCatalogUnreachable(t *testing.T) {
	s := newTestService(t)
	withPullKernel(t, s)
	cs := newCatalogServer(t)
	s.Config.Image.CatalogURL = cs.srv.URL + "/missing.json"
	// (A name with a built-in recipe would be built from it instead.)
	_, err := s.PullImage(context.Background(), api.ImagePullParams{Ref: "bangertest-nocatalog"})
	wantCode(t, err, rpc.CodeUnavailable, "catalog_url", "404")
}
