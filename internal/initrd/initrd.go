// Package initrd makes the initramfs a guest boots with.
//
//   - Build generates banger's own initramfs (gzip'd newc cpio): banger-init
//     as /init (package bootinit), the virtio modules of the kernel with
//     their dependencies (package kmod) listed in load order in
//     /etc/banger-modules, and banger's guest agent. Images with a kernel
//     from banger's kernel store boot with it.
//   - WithAgent keeps images registered with their own initramfs working: it
//     appends a small uncompressed newc archive holding the agent (the
//     kernel unpacks concatenated archives, whatever each one's compression).
//
// Both cache their result by the hash of every input and write it through a
// temporary file renamed into place.
//
//	build.go      Build, the generated initramfs
//	initrd.go     WithAgent, and the newc writer
package initrd

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// AgentPath is where the agent lands in the initramfs.
const AgentPath = "banger/banger-agent"

// WithAgent returns the path of base (an initramfs image) with the agent
// binary appended, building it in cacheDir when it is not there yet. The
// name is the hash of both inputs, so a new agent or image makes a new file.
func WithAgent(cacheDir, base, agent string) (string, error) {
	baseData, err := os.ReadFile(base)
	if err != nil {
		return "", err
	}
	agentData, err := os.ReadFile(agent)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write(baseData)
	h.Write([]byte{0})
	h.Write(agentData)
	out := filepath.Join(cacheDir, "initrd-"+hex.EncodeToString(h.Sum(nil))[:24]+".img")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	var buf bytes.Buffer
	buf.Write(baseData)
	// newc archives must start 4-byte aligned; gzip'd images end anywhere.
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
	w := newWriter(&buf)
	w.dir("banger")
	w.file(AgentPath, 0o755, agentData)
	w.trailer()
	if w.err != nil {
		return "", w.err
	}
	return out, writeAtomic(cacheDir, out, buf.Bytes())
}

// writer writes a newc ("070701") cpio archive.
type writer struct {
	w   io.Writer
	ino int
	err error
}

func newWriter(w io.Writer) *writer { return &writer{w: w, ino: 1} }

func (w *writer) header(name string, mode uint32, size int) { w.headerDev(name, mode, size, 0, 0) }

func (w *writer) headerDev(name string, mode uint32, size int, rmajor, rminor uint32) {
	if w.err != nil {
		return
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
	// rdevmajor, rdevminor, namesize, check — each 8 hex digits.
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, 1, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	w.ino++
	w.write([]byte(hdr + name + "\x00"))
	w.pad(len(hdr) + len(name) + 1)
}

func (w *writer) dir(name string) { w.header(name, 0o040755, 0) }

func (w *writer) file(name string, perm uint32, data []byte) {
	w.header(name, 0o100000|perm, len(data))
	w.write(data)
	w.pad(len(data))
}

// node writes a device node (mode includes the file type bits).
func (w *writer) node(name string, mode, major, minor uint32) {
	w.headerDev(name, mode, 0, major, minor)
}

func (w *writer) trailer() { w.header("TRAILER!!!", 0, 0) }

func (w *writer) write(b []byte) {
	if w.err == nil {
		_, w.err = w.w.Write(b)
	}
}

func (w *writer) pad(n int) {
	if r := n % 4; r != 0 {
		w.write(make([]byte, 4-r))
	}
}
