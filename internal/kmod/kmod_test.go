package kmod

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"banger/internal/testutil/kmodtest"
)

func testTree(t *testing.T) string {
	dir := t.TempDir()
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/virtio/virtio_ring.ko"), "license=GPL", "depends=")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/virtio/virtio.ko"), "depends=virtio_ring")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/virtio/virtio_mmio.ko"), "depends=virtio,virtio_ring")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/net/core/failover.ko"), "depends=")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/net/net_failover.ko"), "depends=failover")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/net/virtio_net.ko"), "depends=net_failover,virtio,virtio_ring")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/char/hw_random/virtio-rng.ko"), "depends=virtio,virtio_ring")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/x/needs_missing.ko"), "depends=no_such_mod")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/x/uses_builtin.ko"), "depends=crc32c_generic")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/x/loop_a.ko"), "depends=loop_b")
	kmodtest.WriteModule(t, filepath.Join(dir, "kernel/drivers/x/loop_b.ko"), "depends=loop_a")
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n"), 0o644)
	return dir
}

func TestResolveOrder(t *testing.T) {
	tr, err := Open(testTree(t))
	if err != nil {
		t.Fatal(err)
	}
	got, err := tr.Resolve([]string{"virtio_mmio", "virtio_net", "virtio_rng", "ext4", "uses-builtin"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_mmio.ko",
		"kernel/net/core/failover.ko",
		"kernel/drivers/net/net_failover.ko",
		"kernel/drivers/net/virtio_net.ko",
		"kernel/drivers/char/hw_random/virtio-rng.ko", // virtio_rng matches virtio-rng
		"kernel/drivers/x/uses_builtin.ko",            // its built-in dependency needs no file
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("order:\n got %q\nwant %q", got, want)
	}
	if !tr.Builtin("ext4") || tr.Builtin("virtio") {
		t.Fatal("builtin list misread")
	}
}

func TestResolveErrors(t *testing.T) {
	tr, err := Open(testTree(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ mod, want string }{
		{"no_such", "module no_such is neither in"},
		{"needs_missing", "module no_such_mod (needed by needs_missing) is neither in"},
		{"loop_a", "dependency cycle"},
	} {
		_, err := tr.Resolve([]string{c.mod})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Resolve(%s) = %v, want an error containing %q", c.mod, err, c.want)
		}
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "foo.ko.xz"), []byte("xz"), 0o644)
	tr, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Resolve([]string{"foo"}); err == nil || !strings.Contains(err.Error(), "compressed") {
		t.Fatalf("compressed module: %v", err)
	}
	if _, err := Open(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no kernel modules") {
		t.Fatalf("empty tree: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.ko")
	os.WriteFile(bad, []byte("not an elf"), 0o644)
	if _, err := ModInfo(bad); err == nil {
		t.Fatal("ModInfo accepted a non-ELF file")
	}
}
