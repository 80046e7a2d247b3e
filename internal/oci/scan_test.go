package oci

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A tree built with real owners (as root) becomes an ext4 image with the
// same owners, modes (setuid included) and xattrs.
func TestScanDirBuildsExactImage(t *testing.T) {
	needE2fsprogs(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files other owners")
	}
	ctx := context.Background()
	tree := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(tree, "usr/bin"), 0o755))
	must(os.WriteFile(filepath.Join(tree, "usr/bin/su"), []byte("#!/bin/sh\n"), 0o755))
	must(syscall.Chmod(filepath.Join(tree, "usr/bin/su"), 0o4755))
	must(os.WriteFile(filepath.Join(tree, "usr/bin/ping"), []byte("ping"), 0o755))
	must(unix.Setxattr(filepath.Join(tree, "usr/bin/ping"), "user.banger", []byte("cap"), 0))
	must(os.MkdirAll(filepath.Join(tree, "home/dev"), 0o750))
	must(os.WriteFile(filepath.Join(tree, "home/dev/.bashrc"), []byte("x"), 0o640))
	must(os.Lchown(filepath.Join(tree, "home/dev"), 1000, 1000))
	must(os.Lchown(filepath.Join(tree, "home/dev/.bashrc"), 1000, 1001))
	must(os.Symlink("usr/bin", filepath.Join(tree, "bin")))

	m, err := ScanDir(ctx, tree)
	if err != nil {
		t.Fatal(err)
	}
	if m.Entries[0].Path != "/" || len(m.Entries) != 9 {
		t.Fatalf("entries: %+v", m.Entries)
	}
	img := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := BuildExt4(ctx, tree, m, img, 0); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]inode{
		"/usr/bin/su":       {Type: "regular", Mode: 0o4755},
		"/home/dev":         {Type: "directory", Mode: 0o750, UID: 1000, GID: 1000},
		"/home/dev/.bashrc": {Type: "regular", Mode: 0o640, UID: 1000, GID: 1001},
		"/bin":              {Type: "symlink", Mode: 0o777},
	} {
		got := stat(t, img, p)
		if got == nil || got.Type != want.Type || got.Mode != want.Mode || got.UID != want.UID || got.GID != want.GID {
			t.Errorf("%s: got %+v, want %+v", p, got, want)
		}
	}
	if out := debugfsR(t, img, "ea_get /usr/bin/ping user.banger"); !strings.Contains(out, "cap") {
		t.Errorf("xattr user.banger not in the image: %s", out)
	}
}

func TestScanDirRefusesSpecialFiles(t *testing.T) {
	tree := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(tree, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ScanDir(context.Background(), tree)
	if err == nil || !strings.Contains(err.Error(), "/fifo is a FIFO") {
		t.Fatalf("ScanDir with a FIFO = %v", err)
	}
}
