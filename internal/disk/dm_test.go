package disk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// needDM skips with the exact reason when device-mapper cannot be used.
func needDM(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(mapperControl, os.O_RDWR, 0)
	if err != nil {
		t.Skipf("device-mapper unavailable: %v", err)
	}
	f.Close()
	needRoot(t)
	needTools(t, "dmsetup", "losetup")
}

func TestDMUnavailable(t *testing.T) {
	f, err := os.OpenFile(mapperControl, os.O_RDWR, 0)
	if err == nil {
		f.Close()
		t.Skip("device-mapper is available here")
	}
	err = dmBackend{}.Available(t.TempDir())
	if !errors.Is(err, ErrUnavailable) || !strings.HasPrefix(err.Error(), "device-mapper ") ||
		!strings.Contains(err.Error(), "("+mapperControl+": ") {
		t.Fatalf("Available = %v", err)
	}
	t.Log(err)
}

// TestDMCreateRemove covers what works without device-mapper: the sparse
// COW file, the name, and Deactivate/Remove of a never-activated root.
func TestDMCreateRemove(t *testing.T) {
	needTools(t, "losetup")
	ctx := context.Background()
	dir := t.TempDir()
	base := makeBase(t, dir, 64<<20, 0)
	b := dmBackend{}
	r, err := b.Create(ctx, base, filepath.Join(dir, "vm1"), 100<<20+1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Backend != "dm" || r.Format != "raw" || r.Path != filepath.Join(dir, "vm1.cow") || r.DMName != dmName(r.Path) {
		t.Fatalf("root = %+v", r)
	}
	if !strings.HasPrefix(r.DMName, "banger-") || len(r.DMName) > 100 {
		t.Fatalf("DMName = %q", r.DMName)
	}
	if dmName(filepath.Join(dir, "vm2.cow")) == r.DMName {
		t.Fatal("different paths share a DMName")
	}
	v, err := virtualSize(size(t, r.Path))
	if err != nil || v != 100<<20+512 {
		t.Fatalf("virtual size = %d, %v", v, err)
	}
	if a := allocated(t, r.Path); a != 0 {
		t.Fatalf("COW file allocates %d bytes", a)
	}
	for i := 0; i < 2; i++ {
		if err := b.Deactivate(ctx, r); err != nil {
			t.Fatal(err)
		}
		if err := b.Remove(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	assertGone(t, r.Path)
}

func TestDMActivate(t *testing.T) {
	needDM(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := makeBase(t, dir, 64<<20, 0)
	baseSum := sha(t, base)
	b := dmBackend{}
	if err := b.Available(dir); err != nil {
		t.Fatal(err)
	}
	for _, grow := range []int64{0, 96 << 20} {
		r, err := b.Create(ctx, base, filepath.Join(dir, "vm"), grow)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Remove(context.Background(), r) })
		dev, err := b.Activate(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := b.Activate(ctx, r); err != nil || again != dev {
			t.Fatalf("second Activate = %q, %v", again, err)
		}
		if want := max(grow, 64<<20); devSize(t, dev) != want {
			t.Fatalf("device size %d, want %d", devSize(t, dev), want)
		}
		data := bytes.Repeat([]byte{0xab}, 64<<10)
		writeAt(t, dev, 0, data)
		if err := b.Deactivate(ctx, r); err != nil {
			t.Fatal(err)
		}
		if sha(t, base) != baseSum {
			t.Fatal("writing the snapshot changed the base")
		}
		for _, f := range []string{base, r.Path} {
			if l, _ := loopsOf(ctx, f); len(l) > 0 {
				t.Fatalf("loops left for %s: %v", f, l)
			}
		}
		// The COW persists the write across activations.
		dev, err = b.Activate(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data))
		f, err := os.Open(dev)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.ReadAt(got, 0)
		f.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back after reactivation: %v", err)
		}
		if err := b.Remove(ctx, r); err != nil {
			t.Fatal(err)
		}
		assertGone(t, r.Path)
		if _, ok := dmDevice(r.DMName); ok {
			t.Fatal("device still present after Remove")
		}
	}
}

func devSize(t *testing.T, dev string) int64 {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.Seek(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
