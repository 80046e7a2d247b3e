// Package kmodtest writes fake kernels for tests: modules that are real ELF
// files with a .modinfo section (all that module tooling reads), a modules
// tree with what banger's initramfs loads, and a bzImage setup header.
package kmodtest

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// WriteModule writes a minimal ELF64 relocatable file whose .modinfo section
// holds the given key=value strings: what debug/elf (and the kernel) read.
func WriteModule(t *testing.T, path string, modinfo ...string) {
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

// WriteBzImage writes a file with an x86 boot setup header announcing rel.
func WriteBzImage(t *testing.T, path, rel string) {
	t.Helper()
	b := make([]byte, 0x400)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x20E:], 0x100) // kernel_version at 0x100+0x200
	copy(b[0x300:], rel+" (test@banger) #1 SMP\x00")
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// WriteGuestModules writes a lib/modules/RELEASE tree with every module
// banger's initramfs loads (virtio_rng as virtio-rng.ko, vsock with its
// dependencies), except those whose path contains skip (when not "").
func WriteGuestModules(t *testing.T, dir string, skip string) {
	t.Helper()
	mods := map[string]string{
		"kernel/drivers/virtio/virtio_ring.ko":                      "",
		"kernel/drivers/virtio/virtio.ko":                           "virtio_ring",
		"kernel/drivers/virtio/virtio_mmio.ko":                      "virtio,virtio_ring",
		"kernel/drivers/virtio/virtio_pci.ko":                       "virtio,virtio_ring",
		"kernel/drivers/block/virtio_blk.ko":                        "virtio,virtio_ring",
		"kernel/drivers/net/virtio_net.ko":                          "virtio,virtio_ring",
		"kernel/drivers/char/virtio_console.ko":                     "virtio,virtio_ring",
		"kernel/drivers/char/hw_random/virtio-rng.ko":               "virtio,virtio_ring",
		"kernel/net/vmw_vsock/vsock.ko":                             "",
		"kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko": "vsock",
		"kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko":        "vmw_vsock_virtio_transport_common,vsock,virtio,virtio_ring",
	}
	for rel, deps := range mods {
		if strings.Contains(rel, skip) && skip != "" {
			continue
		}
		WriteModule(t, filepath.Join(dir, rel), "depends="+deps)
	}
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\n"), 0o644)
	os.Symlink("/usr/src/linux-headers", filepath.Join(dir, "build")) // as installed trees have
}
