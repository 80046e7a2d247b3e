// Package kmodtest writes fake kernel modules for tests: real ELF files
// with a .modinfo section, all that module tooling reads.
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
