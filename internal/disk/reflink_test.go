package disk

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReflink(t *testing.T) {
	mnt := mountXFS(t)
	ctx := context.Background()
	b := reflinkBackend{}
	if err := b.Available(mnt); err != nil {
		t.Fatalf("Available on XFS with reflink=1: %v", err)
	}
	base := makeBase(t, mnt, 512<<20, 64<<20)
	baseSum := sha(t, base)

	start := time.Now()
	r, err := b.Create(ctx, base, filepath.Join(mnt, "vm1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reflink clone of a 512 MiB image (%d MiB allocated): %v", allocated(t, base)>>20, time.Since(start))
	if r.Backend != "reflink" || r.Format != "raw" || r.Path != filepath.Join(mnt, "vm1.raw") {
		t.Fatalf("root = %+v", r)
	}
	if sha(t, r.Path) != baseSum {
		t.Fatal("clone differs from base")
	}
	writeAt(t, r.Path, 0, bytes.Repeat([]byte{0xab}, 64<<10))
	if sha(t, base) != baseSum {
		t.Fatal("writing the clone changed the base")
	}
	if sha(t, r.Path) == baseSum {
		t.Fatal("write to clone had no effect")
	}

	big, err := b.Create(ctx, base, filepath.Join(mnt, "vm2"), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if got := size(t, big.Path); got != 1<<30 {
		t.Fatalf("grown clone size = %d", got)
	}
	for _, root := range []Root{r, big} {
		for i := 0; i < 2; i++ {
			if err := b.Remove(ctx, root); err != nil {
				t.Fatal(err)
			}
		}
		assertGone(t, root.Path)
	}
	assertNoProbeFiles(t, mnt)
}

func TestReflinkUnavailable(t *testing.T) {
	dir := t.TempDir()
	if fsType(dir) != "ext4" {
		t.Skipf("temp dir is on %s, not ext4", fsType(dir))
	}
	err := reflinkBackend{}.Available(dir)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Available on ext4 = %v, want ErrUnavailable", err)
	}
	if want := "filesystem of " + dir + " does not support reflink (ext4)"; err.Error() != want {
		t.Fatalf("error = %q, want %q", err, want)
	}
	assertNoProbeFiles(t, dir)
}

func assertNoProbeFiles(t *testing.T, dir string) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, ".banger-reflink-probe-*"))
	if len(m) > 0 {
		t.Fatalf("probe files left: %s", strings.Join(m, " "))
	}
}
