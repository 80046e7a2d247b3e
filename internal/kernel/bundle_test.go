package kernel

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/store"
	"banger/internal/testutil/kmodtest"
)

// bundleServer serves a kernel catalog at /catalog.json and bundle bodies
// at /NAME.tar.zst on 127.0.0.1, counting bundle requests. A bundle's
// catalog entry has the sha256 and size of sums[NAME] when set (a wrong
// catalog), else of its body.
type bundleServer struct {
	*httptest.Server
	mu       sync.Mutex
	bodies   map[string][]byte
	entries  []image.CatalogEntry
	requests atomic.Int64
	gate     chan struct{} // when set, bundle responses wait for it
	got      chan struct{} // signaled on each bundle request
}

func newBundleServer(t *testing.T) *bundleServer {
	bs := &bundleServer{bodies: map[string][]byte{}, got: make(chan struct{}, 16)}
	bs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bs.mu.Lock()
		defer bs.mu.Unlock()
		if r.URL.Path == "/catalog.json" {
			json.NewEncoder(w).Encode(image.Catalog{Entries: bs.entries})
			return
		}
		body, ok := bs.bodies[strings.TrimPrefix(r.URL.Path, "/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		bs.requests.Add(1)
		bs.got <- struct{}{}
		if g := bs.gate; g != nil {
			bs.mu.Unlock()
			<-g
			bs.mu.Lock()
		}
		w.Write(body)
	}))
	t.Cleanup(bs.Close)
	return bs
}

// add serves body as NAME's bundle, listed with the given sha256 and
// size (zero values: body's own).
func (bs *bundleServer) add(name string, body []byte, sum string, size int64) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if sum == "" {
		h := sha256.Sum256(body)
		sum = hex.EncodeToString(h[:])
	}
	if size == 0 {
		size = int64(len(body))
	}
	bs.bodies[name+".tar.zst"] = body
	bs.entries = append(bs.entries, image.CatalogEntry{Name: name, Description: "test kernel " + name,
		URL: bs.URL + "/" + name + ".tar.zst", SHA256: sum, Size: size})
}

// testBundle imports a kmodtest kernel into a store of its own and writes
// it as a bundle with WriteBundle, returning the bundle's bytes.
func testBundle(t *testing.T) []byte {
	t.Helper()
	src := t.TempDir()
	kmodtest.WriteBzImage(t, filepath.Join(src, "vmlinuz"), release)
	kmodtest.WriteGuestModules(t, filepath.Join(src, release), "")
	s := newStore(t)
	k, err := s.Import(context.Background(), "made", Source{Kernel: filepath.Join(src, "vmlinuz"), Modules: filepath.Join(src, release)}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	os.Symlink("/usr/src/linux-headers", filepath.Join(Modules(k), "build")) // as installed trees have
	out := filepath.Join(t.TempDir(), "made.tar.zst")
	m := BundleManifest{Name: k.Name, Release: k.Release, Origin: k.Source, CreatedAt: time.Now().UTC()}
	sum, size, err := WriteBundle(context.Background(), out, m, Image(k), Modules(k))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != sum || int64(len(b)) != size {
		t.Fatalf("WriteBundle says %s %d; the file is %x %d", sum, size, h, len(b))
	}
	if _, _, err := WriteBundle(context.Background(), out, m, Image(k), Modules(k)); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("WriteBundle over an existing file: %v", err)
	}
	return b
}

// pullStore is a store reading the server's catalog.
func pullStore(t *testing.T, bs *bundleServer) *Store {
	s := newStore(t)
	s.CatalogURL = bs.URL + "/catalog.json"
	return s
}

// nothingLeft checks that a failed pull left no kernel, row or staging.
func nothingLeft(t *testing.T, s *Store) {
	t.Helper()
	storeClean(t, s)
	if ks, _ := s.List(context.Background()); len(ks) != 0 {
		t.Fatalf("rows after a failed pull: %+v", ks)
	}
}

func TestBundlePull(t *testing.T) {
	ctx := context.Background()
	bs := newBundleServer(t)
	body := testBundle(t)
	bs.add("kb", body, "", 0)
	s := pullStore(t, bs)

	var stages []string
	k, err := s.Pull(ctx, "kb", false, finished(&stages))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(stages, " "); got != "download bundle:done unpack bundle:done copy:done check modules:done modules image:done install:done" {
		t.Fatalf("stages %s", got)
	}
	if k.Release != release || !strings.HasPrefix(k.Source, "bundle "+bs.URL+"/kb.tar.zst sha256:") {
		t.Fatalf("kernel %+v", k)
	}
	if BzImageRelease(Image(k)) != release {
		t.Fatalf("pulled kernel announces %q", BzImageRelease(Image(k)))
	}
	if _, err := os.Lstat(filepath.Join(Modules(k), "build")); err == nil {
		t.Fatal("the build symlink travelled in the bundle")
	}
	storeClean(t, s, "kb")
	// Usable: banger's initramfs builds from it.
	initBin := filepath.Join(t.TempDir(), "banger-init")
	os.WriteFile(initBin, []byte("init"), 0o755)
	if _, err := Initramfs(k, t.TempDir(), initBin, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx, "kb", false, nil); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second pull: %v", err)
	}
	av, err := s.Available(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range av {
		if a.Name == "kb" {
			found = a.Pulled && a.Bundle == bs.URL+"/kb.tar.zst" && a.Package == ""
		}
	}
	if !found {
		t.Fatalf("available: %+v", av)
	}
	if bs.requests.Load() != 1 {
		t.Fatalf("%d bundle requests, want 1", bs.requests.Load())
	}
}

func TestBundlePullRefusesBadDownloads(t *testing.T) {
	ctx := context.Background()
	bs := newBundleServer(t)
	body := testBundle(t)
	bs.add("badsum", body, strings.Repeat("0", 64), 0)
	bs.add("short", body[:len(body)/2], "", int64(len(body)))
	bs.add("long", body, "", int64(len(body)-1))
	for name, want := range map[string]string{
		"badsum": "sha256",
		"short":  "truncated",
		"long":   "more than the",
	} {
		s := pullStore(t, bs)
		_, err := s.Pull(ctx, name, false, nil)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "refused") {
			t.Errorf("pull %s: %v, want %q", name, err, want)
		}
		nothingLeft(t, s)
	}
	s := pullStore(t, bs)
	if _, err := s.Pull(ctx, "absent", false, nil); err == nil || !strings.Contains(err.Error(), "no kernel \"absent\" in the catalog") {
		t.Fatalf("pull of a name no catalog has: %v", err)
	}
}

// A bundle whose download fails falls back to the entry's Debian package
// (here one apt does not know, so the apt path fails locally).
func TestBundlePullFallsBackToApt(t *testing.T) {
	old := Catalog
	Catalog = append([]Entry{{Name: "fb", Package: "linux-image-0.0.0-banger-test-nonexistent"}}, old...)
	t.Cleanup(func() { Catalog = old })
	bs := newBundleServer(t)
	bs.add("fb", testBundle(t), strings.Repeat("0", 64), 0)
	s := pullStore(t, bs)
	var stages []string
	_, err := s.Pull(context.Background(), "fb", false, finished(&stages))
	if err == nil || !strings.Contains(err.Error(), "apt-cache show linux-image-0.0.0-banger-test-nonexistent") {
		t.Fatalf("pull: %v", err)
	}
	if got := strings.Join(stages, " "); got != "download bundle:failed resolve:failed" {
		t.Fatalf("stages %s", got)
	}
	nothingLeft(t, s)

	// An unreachable catalog: the package, saying why.
	bs.Close()
	stages = nil
	_, err = s.Pull(context.Background(), "fb", false, finished(&stages))
	if err == nil || !strings.Contains(err.Error(), "apt-cache show") {
		t.Fatalf("pull with the catalog down: %v", err)
	}
	if got := strings.Join(stages, " "); got != "download bundle:skipped resolve:failed" {
		t.Fatalf("stages %s", got)
	}
	if _, err := s.Pull(context.Background(), "kb-only", false, nil); err == nil || !strings.Contains(err.Error(), "[kernel] catalog_url") {
		t.Fatalf("pull of a bundle-only name with the catalog down: %v", err)
	}
	nothingLeft(t, s)
}

// hostileBundle is a bundle with a valid manifest followed by extra.
func hostileBundle(t *testing.T, extra ...*tar.Header) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, _ := zstd.NewWriter(&b)
	tw := tar.NewWriter(zw)
	kern := []byte("kernel")
	m := BundleManifest{Kind: BundleKind, Name: "h", Release: release, Files: []BundleFile{{Name: "vmlinuz", Size: int64(len(kern))}}}
	for _, h := range extra {
		if h.Typeflag == tar.TypeReg {
			m.Files = append(m.Files, BundleFile{Name: h.Name, Size: h.Size})
		}
	}
	if err := image.AddJSON(tw, image.BundleManifestFile, m, time.Now()); err != nil {
		t.Fatal(err)
	}
	tw.WriteHeader(&tar.Header{Name: "vmlinuz", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(kern))})
	tw.Write(kern)
	for _, h := range extra {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	tw.Close()
	zw.Close()
	return b.Bytes()
}

func TestBundlePullRefusesHostileEntries(t *testing.T) {
	mod := "modules/" + release + "/"
	for _, c := range []struct {
		hdr  tar.Header
		want string
	}{
		{tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Size: 1}, "`..`"},
		{tar.Header{Name: mod + "../../../escape", Typeflag: tar.TypeReg, Size: 1}, "`..`"},
		{tar.Header{Name: "/etc/escape", Typeflag: tar.TypeReg, Size: 1}, "absolute"},
		{tar.Header{Name: mod + "link", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, "symlink refused"},
		{tar.Header{Name: mod + "hard", Typeflag: tar.TypeLink, Linkname: "vmlinuz"}, "hard link refused"},
		{tar.Header{Name: mod + "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}, "device refused"},
		{tar.Header{Name: mod + "fifo", Typeflag: tar.TypeFifo}, "fifo refused"},
		{tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Size: 1}, "outside"},
		{tar.Header{Name: "modules/6.6.6-other/x.ko", Typeflag: tar.TypeReg, Size: 1}, "outside"},
	} {
		bs := newBundleServer(t)
		bs.add("h", hostileBundle(t, &c.hdr), "", 0)
		s := pullStore(t, bs)
		_, err := s.Pull(context.Background(), "h", false, nil)
		if err == nil || !strings.Contains(err.Error(), "entry \""+c.hdr.Name+"\"") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("entry %s: %v, want it named and %q", c.hdr.Name, err, c.want)
		}
		nothingLeft(t, s)
		if _, err := os.Lstat(filepath.Join(filepath.Dir(s.Dir), "escape")); err == nil {
			t.Fatalf("entry %s wrote outside the store", c.hdr.Name)
		}
	}
}

// Two concurrent pulls of one name download once and get the same kernel.
func TestBundlePullCoalesces(t *testing.T) {
	bs := newBundleServer(t)
	bs.add("kc", testBundle(t), "", 0)
	bs.gate = make(chan struct{})
	s := pullStore(t, bs)
	type result struct {
		k   store.Kernel
		err error
	}
	results := make(chan result, 2)
	pull := func() {
		k, err := s.Pull(context.Background(), "kc", false, nil)
		results <- result{k, err}
	}
	// The first caller goes away while downloading; the pull goes on for
	// the two who joined.
	first, cancelFirst := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() {
		_, err := s.Pull(first, "kc", false, nil)
		firstErr <- err
	}()
	<-bs.got // the first pull is downloading
	go pull()
	go pull()
	waitJoined(t, s, "kc", 3)
	cancelFirst()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: %v", err)
	}
	close(bs.gate)
	a, b := <-results, <-results
	if a.err != nil || b.err != nil {
		t.Fatalf("pulls: %v, %v", a.err, b.err)
	}
	if a.k.Dir != b.k.Dir || a.k.CreatedAt != b.k.CreatedAt {
		t.Fatalf("different kernels: %+v %+v", a.k, b.k)
	}
	if n := bs.requests.Load(); n != 1 {
		t.Fatalf("%d bundle downloads, want 1", n)
	}
	storeClean(t, s, "kc")
}

// waitJoined waits until n callers follow the running pull of name.
func waitJoined(t *testing.T, s *Store, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.pullMu.Lock()
		f := s.pulls[name]
		joined := f != nil && len(f.reports) == n
		s.pullMu.Unlock()
		if joined {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callers never joined the pull of %s", n, name)
		}
		time.Sleep(time.Millisecond)
	}
}

// Canceling the only caller stops the pull, which leaves nothing.
func TestBundlePullCanceled(t *testing.T) {
	bs := newBundleServer(t)
	bs.add("kx", testBundle(t), "", 0)
	gate := make(chan struct{})
	bs.gate = gate
	t.Cleanup(func() { close(gate) })
	s := pullStore(t, bs)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := s.Pull(ctx, "kx", false, nil)
		errc <- err
	}()
	<-bs.got
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled pull: %v", err)
	}
	nothingLeft(t, s)
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	if len(s.pulls) != 0 {
		t.Fatalf("pulls still recorded: %v", s.pulls)
	}
}

// finished records each stage's end as NAME:STATE.
func finished(stages *[]string) Reporter {
	return func(st api.Stage) {
		if st.State != "running" {
			*stages = append(*stages, st.Name+":"+st.State)
		}
	}
}
