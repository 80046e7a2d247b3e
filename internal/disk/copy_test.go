package disk

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCopy(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := makeBase(t, dir, 512<<20, 1<<20)
	baseSum := sha(t, base)
	b := copyBackend{}
	if err := b.Available(dir); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	r, err := b.Create(ctx, base, filepath.Join(dir, "vm1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	used := allocated(t, r.Path)
	t.Logf("sparse copy of a 512 MiB image (%d MiB allocated): %v; copy uses %d MiB",
		allocated(t, base)>>20, time.Since(start), used>>20)
	if r.Backend != "copy" || r.Format != "raw" || r.Path != filepath.Join(dir, "vm1.raw") {
		t.Fatalf("root = %+v", r)
	}
	if size(t, r.Path) != 512<<20 || sha(t, r.Path) != baseSum {
		t.Fatal("copy differs from base")
	}
	if used > 64<<20 || used > allocated(t, base)+(1<<20) {
		t.Fatalf("copy is not sparse: %d bytes allocated (base: %d)", used, allocated(t, base))
	}
	writeAt(t, r.Path, 0, bytes.Repeat([]byte{0xab}, 4096))
	if sha(t, base) != baseSum {
		t.Fatal("writing the copy changed the base")
	}

	big, err := b.Create(ctx, base, filepath.Join(dir, "vm2"), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if size(t, big.Path) != 1<<30 || allocated(t, big.Path) > 64<<20 {
		t.Fatalf("grown copy: size %d, allocated %d", size(t, big.Path), allocated(t, big.Path))
	}
	for _, root := range []Root{r, big} {
		for i := 0; i < 2; i++ {
			if err := b.Remove(ctx, root); err != nil {
				t.Fatal(err)
			}
		}
		assertGone(t, root.Path)
	}
}

// TestSparseCopyHoles checks data at the start, middle and end, and a file
// that ends in a hole.
func TestSparseCopyHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("start"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeAt(t, src, 100<<20, []byte("middle"))
	writeAt(t, src, 200<<20, []byte("end"))
	if err := os.Truncate(src, 300<<20); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := sparseCopy(context.Background(), src, dst, 0); err != nil {
		t.Fatal(err)
	}
	if sha(t, src) != sha(t, dst) || size(t, dst) != 300<<20 {
		t.Fatal("content differs")
	}
	if a := allocated(t, dst); a > 1<<20 {
		t.Fatalf("dst allocates %d bytes", a)
	}
	// A canceled context aborts and removes the partial copy.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sparseCopy(ctx, src, dst+"2", 0); err == nil {
		t.Fatal("copy with canceled context succeeded")
	}
	assertGone(t, dst+"2")
}
