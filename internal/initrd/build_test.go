package initrd

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/testutil/kmodtest"
)

// The generated initramfs is unpacked by the real cpio: init, agent, modules
// in load order, device nodes.
func TestBuildRealCpio(t *testing.T) {
	dir := t.TempDir()
	mods := filepath.Join(dir, "lib/modules/6.1.0-test")
	kmodtest.WriteModule(t, filepath.Join(mods, "kernel/drivers/virtio/virtio_ring.ko"), "depends=")
	kmodtest.WriteModule(t, filepath.Join(mods, "kernel/drivers/virtio/virtio.ko"), "depends=virtio_ring")
	kmodtest.WriteModule(t, filepath.Join(mods, "kernel/drivers/block/virtio_blk.ko"), "depends=virtio,virtio_ring")
	kmodtest.WriteModule(t, filepath.Join(mods, "kernel/drivers/unused.ko"), "depends=")
	os.WriteFile(filepath.Join(mods, "modules.builtin"), []byte("kernel/drivers/virtio/virtio_mmio.ko\n"), 0o644)
	initBin := filepath.Join(dir, "banger-init")
	os.WriteFile(initBin, []byte("\x7fELF init"), 0o755)
	agent := filepath.Join(dir, "banger-agent")
	os.WriteFile(agent, []byte("\x7fELF agent"), 0o755)
	cache := filepath.Join(dir, "cache")
	spec := Spec{Init: initBin, Agent: agent, Modules: mods, Load: []string{"virtio_mmio", "virtio_blk"}}

	out, err := Build(cache, spec)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := Build(cache, spec); err != nil || again != out {
		t.Fatalf("second build: %s %v, want the cached %s", again, err, out)
	}
	if left, _ := filepath.Glob(filepath.Join(cache, ".initrd-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	x := extract(t, out)
	for name, want := range map[string]string{"init": "\x7fELF init", AgentPath: "\x7fELF agent"} {
		b, err := os.ReadFile(filepath.Join(x, name))
		if err != nil || string(b) != want {
			t.Errorf("%s: %q %v", name, b, err)
		}
		if st, _ := os.Stat(filepath.Join(x, name)); st == nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s mode %v", name, st)
		}
	}
	list, _ := os.ReadFile(filepath.Join(x, "etc/banger-modules"))
	wantList := "kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio.ko\nkernel/drivers/block/virtio_blk.ko\n"
	if string(list) != wantList {
		t.Errorf("module list %q, want %q", list, wantList)
	}
	for _, l := range strings.Fields(wantList) {
		if _, err := os.Stat(filepath.Join(x, "lib/modules/6.1.0-test", l)); err != nil {
			t.Errorf("module %s missing: %v", l, err)
		}
	}
	if _, err := os.Stat(filepath.Join(x, "lib/modules/6.1.0-test/kernel/drivers/unused.ko")); err == nil {
		t.Error("a module nobody needs was packed")
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "run"} {
		if st, err := os.Stat(filepath.Join(x, d)); err != nil || !st.IsDir() {
			t.Errorf("dir %s: %v", d, err)
		}
	}
	// cpio -t -v shows the device nodes (extracting them needs no privileges this way).
	tv := listVerbose(t, out)
	if !strings.Contains(tv, "crw-------") || !strings.Contains(tv, "5,   1") || !strings.Contains(tv, "dev/console") {
		t.Errorf("no /dev/console char 5,1 in:\n%s", tv)
	}

	// Another agent: another file; a missing module: a clear error, nothing written.
	os.WriteFile(agent, []byte("\x7fELF agent v2"), 0o755)
	if next, err := Build(cache, spec); err != nil || next == out {
		t.Fatalf("new agent: %s %v (old %s)", next, err, out)
	}
	bad := spec
	bad.Load = []string{"virtio_net"}
	if _, err := Build(cache, bad); err == nil || !strings.Contains(err.Error(), "virtio_net") {
		t.Fatalf("missing module: %v", err)
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 2 {
		t.Fatalf("cache holds %d files, want 2", len(ents))
	}
	if _, err := Build(cache, Spec{Agent: agent}); err == nil {
		t.Fatal("no init accepted")
	}
}

func gunzip(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func extract(t *testing.T, img string) string {
	t.Helper()
	x := t.TempDir()
	cmd := exec.Command("cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*")
	cmd.Dir = x
	cmd.Stdin = bytes.NewReader(gunzip(t, img))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v %s", err, b)
	}
	return x
}

func listVerbose(t *testing.T, img string) string {
	t.Helper()
	cmd := exec.Command("cpio", "-t", "-v", "--quiet")
	cmd.Stdin = bytes.NewReader(gunzip(t, img))
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v %s", err, b)
	}
	return string(b)
}
