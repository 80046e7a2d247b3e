package kmod

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeModule writes a minimal ELF64 relocatable file whose .modinfo section
// holds the given key=value strings: what debug/elf (and the kernel) read.
func writeModule(t *testing.T, path string, modinfo ...string) {
	t.Helper()
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	var b bytes.Buffer
	le := binary.LittleEndian
	infoOff := 64
	strOff := infoOff + len(info)
	shOff := (strOff + len(shstr) + 7) &^ 7
	// ELF header
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	binary.Write(&b, le, uint16(1))     // ET_REL
	binary.Write(&b, le, uint16(62))    // EM_X86_64
	binary.Write(&b, le, uint32(1))     // version
	binary.Write(&b, le, uint64(0))     // entry
	binary.Write(&b, le, uint64(0))     // phoff
	binary.Write(&b, le, uint64(shOff)) // shoff
	binary.Write(&b, le, uint32(0))     // flags
	binary.Write(&b, le, uint16(64))    // ehsize
	binary.Write(&b, le, uint16(0))     // phentsize
	binary.Write(&b, le, uint16(0))     // phnum
	binary.Write(&b, le, uint16(64))    // shentsize
	binary.Write(&b, le, uint16(3))     // shnum
	binary.Write(&b, le, uint16(2))     // shstrndx
	b.Write(info)
	b.Write(shstr)
	for b.Len() < shOff {
		b.WriteByte(0)
	}
	sh := func(name, typ uint32, off, size int) {
		binary.Write(&b, le, name)
		binary.Write(&b, le, typ)
		binary.Write(&b, le, uint64(0)) // flags
		binary.Write(&b, le, uint64(0)) // addr
		binary.Write(&b, le, uint64(off))
		binary.Write(&b, le, uint64(size))
		binary.Write(&b, le, uint32(0)) // link
		binary.Write(&b, le, uint32(0)) // info
		binary.Write(&b, le, uint64(1)) // align
		binary.Write(&b, le, uint64(0)) // entsize
	}
	sh(0, 0, 0, 0)
	sh(1, 1, infoOff, len(info))  // .modinfo, PROGBITS
	sh(10, 3, strOff, len(shstr)) // .shstrtab, STRTAB
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func testTree(t *testing.T) string {
	dir := t.TempDir()
	writeModule(t, filepath.Join(dir, "kernel/drivers/virtio/virtio_ring.ko"), "license=GPL", "depends=")
	writeModule(t, filepath.Join(dir, "kernel/drivers/virtio/virtio.ko"), "depends=virtio_ring")
	writeModule(t, filepath.Join(dir, "kernel/drivers/virtio/virtio_mmio.ko"), "depends=virtio,virtio_ring")
	writeModule(t, filepath.Join(dir, "kernel/net/core/failover.ko"), "depends=")
	writeModule(t, filepath.Join(dir, "kernel/drivers/net/net_failover.ko"), "depends=failover")
	writeModule(t, filepath.Join(dir, "kernel/drivers/net/virtio_net.ko"), "depends=net_failover,virtio,virtio_ring")
	writeModule(t, filepath.Join(dir, "kernel/drivers/char/hw_random/virtio-rng.ko"), "depends=virtio,virtio_ring")
	writeModule(t, filepath.Join(dir, "kernel/drivers/x/needs_missing.ko"), "depends=no_such_mod")
	writeModule(t, filepath.Join(dir, "kernel/drivers/x/uses_builtin.ko"), "depends=crc32c_generic")
	writeModule(t, filepath.Join(dir, "kernel/drivers/x/loop_a.ko"), "depends=loop_b")
	writeModule(t, filepath.Join(dir, "kernel/drivers/x/loop_b.ko"), "depends=loop_a")
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
