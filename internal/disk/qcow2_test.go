package disk

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestQcow2(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	dir := t.TempDir()
	base := makeBase(t, dir, 64<<20, 0)
	baseSum := sha(t, base)
	b := qcow2Backend{}
	if err := b.Available(dir); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	r, err := b.Create(ctx, base, filepath.Join(dir, "vm1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("qcow2 create: %v", time.Since(start))
	if r.Backend != "qcow2" || r.Format != "qcow2" || r.Path != filepath.Join(dir, "vm1.qcow2") || r.Base != base {
		t.Fatalf("root = %+v", r)
	}
	if p, err := b.Activate(ctx, r); err != nil || p != r.Path {
		t.Fatalf("Activate = %q, %v", p, err)
	}

	mustRun(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", r.Path)
	if got := sha(t, base); got != baseSum {
		t.Fatal("writing the overlay changed the base")
	}
	info := qemuInfo(t, r.Path)
	if info.BackingFile != base || info.BackingFormat != "raw" || info.VirtualSize != 64<<20 {
		t.Fatalf("qemu-img info = %+v", info)
	}
	if out := mustRun(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 64k", r.Path); !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("read back: %s", out)
	}

	// An existing file is never overwritten.
	if _, err := b.Create(ctx, base, filepath.Join(dir, "vm1"), 0); err == nil {
		t.Fatal("Create over an existing overlay succeeded")
	}

	big, err := b.Create(ctx, base, filepath.Join(dir, "vm2"), 128<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got := qemuInfo(t, big.Path).VirtualSize; got != 128<<20 {
		t.Fatalf("grown virtual size = %d", got)
	}

	for _, root := range []Root{r, big} {
		if err := b.Deactivate(ctx, root); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ { // idempotent
			if err := b.Remove(ctx, root); err != nil {
				t.Fatalf("Remove #%d: %v", i+1, err)
			}
		}
		assertGone(t, root.Path)
	}
	if got := sha(t, base); got != baseSum {
		t.Fatal("base changed")
	}
}

type imgInfo struct {
	VirtualSize   int64  `json:"virtual-size"`
	BackingFile   string `json:"backing-filename"`
	BackingFormat string `json:"backing-filename-format"`
}

func qemuInfo(t *testing.T, path string) imgInfo {
	t.Helper()
	var info imgInfo
	if err := json.Unmarshal([]byte(mustRun(t, "qemu-img", "info", "--output=json", "-U", path)), &info); err != nil {
		t.Fatal(err)
	}
	return info
}
