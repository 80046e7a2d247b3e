package image

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func mkfs(t *testing.T, p string, size int64) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", p).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v %s", err, out)
	}
}

func TestBundleRoundTrip(t *testing.T) {
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "in.ext4")
	mkfs(t, rootfs, 64<<20)
	seed := filepath.Join(dir, "seed")
	os.MkdirAll(filepath.Join(seed, ".config/tool"), 0o755)
	os.WriteFile(filepath.Join(seed, ".config/tool/rc"), []byte("rc\n"), 0o600)
	out := filepath.Join(dir, "b.tar.zst")
	ctx := context.Background()
	if _, _, err := WriteBundle(ctx, out, BundleManifest{Name: "x"}, rootfs, seed); err != nil {
		t.Fatal(err)
	}
	if _, _, err := WriteBundle(ctx, out, BundleManifest{Name: "x"}, rootfs, ""); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("writing over a bundle: %v", err)
	}
	un := filepath.Join(dir, "un")
	os.Mkdir(un, 0o700)
	m, err := Unpack(ctx, out, un)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "x" || !m.WorkSeed || m.Kind != BundleKindImage {
		t.Errorf("manifest %+v", m)
	}
	a, _ := os.ReadFile(rootfs)
	b, _ := os.ReadFile(filepath.Join(un, RootFSFile))
	if !bytes.Equal(a, b) {
		t.Fatal("unpacked rootfs differs")
	}
	var st1, st2 = statBlocks(t, rootfs), statBlocks(t, filepath.Join(un, RootFSFile))
	if st2 > st1*2+64 {
		t.Errorf("unpacked rootfs uses %d blocks, the original %d: not sparse", st2, st1)
	}
	if err := ExtractSeed(ctx, un); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(un, SeedDir, ".config/tool/rc")); string(got) != "rc\n" {
		t.Errorf("seed file: %q", got)
	}
}

func statBlocks(t *testing.T, p string) int64 {
	out, err := exec.Command("stat", "-c", "%b", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, c := range strings.TrimSpace(string(out)) {
		n = n*10 + int64(c-'0')
	}
	return n
}

// zstdTar writes a .tar.zst of entries.
func zstdTar(t *testing.T, p string, hdrs ...*tar.Header) {
	t.Helper()
	f, _ := os.Create(p)
	defer f.Close()
	zw, _ := zstd.NewWriter(f)
	tw := tar.NewWriter(zw)
	for _, h := range hdrs {
		tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			tw.Write(make([]byte, h.Size))
		}
	}
	tw.Close()
	zw.Close()
}

func TestUnpackRefusesUnexpectedEntries(t *testing.T) {
	for _, h := range []*tar.Header{
		{Name: "../rootfs.ext4", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644},
		{Name: "rootfs.ext4", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"},
		{Name: "extra", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644},
	} {
		dir := t.TempDir()
		b := filepath.Join(dir, "b.tar.zst")
		zstdTar(t, b, h)
		un := filepath.Join(dir, "un")
		os.Mkdir(un, 0o700)
		_, err := Unpack(context.Background(), b, un)
		if err == nil || !strings.Contains(err.Error(), h.Name) {
			t.Errorf("entry %q: %v, want a refusal naming it", h.Name, err)
		}
	}
}

func TestExtractSeedRefusesEscapes(t *testing.T) {
	for _, h := range []*tar.Header{
		{Name: "../evil", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644},
		{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/"},
	} {
		dir := t.TempDir()
		f, _ := os.Create(filepath.Join(dir, WorkSeedFile))
		tw := tar.NewWriter(f)
		tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("x"))
		}
		tw.Close()
		f.Close()
		err := ExtractSeed(context.Background(), dir)
		if err == nil || !strings.Contains(err.Error(), h.Name) {
			t.Errorf("seed entry %q: %v, want a refusal naming it", h.Name, err)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "evil")); err == nil {
			t.Errorf("wrote outside the seed directory")
		}
	}
}

func TestCatalogValidate(t *testing.T) {
	c, err := Embedded(CatalogImages)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Embedded(CatalogKernels); err != nil {
		t.Fatal(err)
	}
	_ = c
	ok := CatalogEntry{Name: "a", URL: "http://127.0.0.1/a.tar.zst", SHA256: strings.Repeat("a", 64), Size: 1}
	for _, bad := range []CatalogEntry{
		{Name: "a/b", URL: ok.URL, SHA256: ok.SHA256, Size: 1},
		{Name: "a", URL: "file:///x", SHA256: ok.SHA256, Size: 1},
		{Name: "a", URL: ok.URL, SHA256: "abc", Size: 1},
		{Name: "a", URL: ok.URL, SHA256: ok.SHA256},
	} {
		if err := (Catalog{Entries: []CatalogEntry{bad}}).Validate(); err == nil {
			t.Errorf("entry %+v accepted", bad)
		}
	}
	if err := (Catalog{Entries: []CatalogEntry{ok, ok}}).Validate(); err == nil {
		t.Error("a duplicate name was accepted")
	}
}
