package kernel

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// CheckImage accepts an ELF vmlinux or an x86 bzImage ("HdrS" at 0x202).
func CheckImage(f io.ReaderAt) error {
	head := make([]byte, 0x206)
	n, _ := f.ReadAt(head, 0)
	head = head[:n]
	if bytes.HasPrefix(head, []byte("\x7fELF")) || (n >= 0x206 && string(head[0x202:0x206]) == "HdrS") {
		return nil
	}
	return fmt.Errorf("not a kernel: want an ELF vmlinux or a bzImage")
}

// BzImageRelease returns the release (uname -r) a bzImage announces in its
// setup header's kernel_version string, or "" when it has none.
func BzImageRelease(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := f.ReadAt(hdr, 0); err != nil || string(hdr[0x202:0x206]) != "HdrS" {
		return ""
	}
	off := binary.LittleEndian.Uint16(hdr[0x20E:])
	if off == 0 {
		return ""
	}
	s := make([]byte, 256)
	n, _ := f.ReadAt(s, int64(off)+0x200)
	v, _, _ := strings.Cut(string(s[:n]), " ")
	v, _, _ = strings.Cut(v, "\x00")
	return v
}

// modulesRelease finds the modules tree in dir: dir itself when it is a
// lib/modules/RELEASE directory (it holds kernel/), or its only
// subdirectory that is one (dir is lib/modules).
func modulesRelease(dir string) (tree, release string, err error) {
	isTree := func(d string) bool {
		st, err := os.Stat(filepath.Join(d, "kernel"))
		return err == nil && st.IsDir()
	}
	if isTree(dir) {
		return dir, filepath.Base(dir), nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", "", fmt.Errorf("--modules %s: %w", dir, err)
	}
	var found []string
	for _, e := range ents {
		if e.IsDir() && isTree(filepath.Join(dir, e.Name())) {
			found = append(found, e.Name())
		}
	}
	switch len(found) {
	case 1:
		return filepath.Join(dir, found[0]), found[0], nil
	case 0:
		return "", "", fmt.Errorf("--modules %s: not a modules directory (want lib/modules/RELEASE, holding kernel/)", dir)
	}
	return "", "", fmt.Errorf("--modules %s holds several kernels (%s): pass one lib/modules/RELEASE directory", dir, strings.Join(found, ", "))
}

// unpackDeb extracts a Debian kernel package into dir (never installing it)
// and returns its kernel image and modules tree.
func unpackDeb(ctx context.Context, deb, dir string) (image, modules string, err error) {
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, strings.TrimSpace(string(out)))
	}
	modules, release, err := modulesRelease(filepath.Join(dir, "lib/modules"))
	if err != nil {
		return "", "", fmt.Errorf("package %s: %w", filepath.Base(deb), err)
	}
	for _, name := range []string{"vmlinuz-" + release, "vmlinux-" + release} {
		p := filepath.Join(dir, "boot", name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, modules, nil
		}
	}
	return "", "", fmt.Errorf("package %s has no boot/vmlinuz-%s", filepath.Base(deb), release)
}

// copyTree copies the regular files and directories under src to dst
// (symlinks such as build/ and source/ point at headers and are skipped),
// returning the bytes copied.
func copyTree(ctx context.Context, src, dst string) (int64, error) {
	var total int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type().IsRegular():
			n, err := copyFile(p, target, 0o644)
			total += n
			return err
		}
		return nil
	})
	return total, err
}

func copyFile(src, dst string, perm os.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}
