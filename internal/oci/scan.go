package oci

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ScanDir describes a directory tree that already has its real owners,
// modes and xattrs on disk (built as root, e.g. by debootstrap) as a
// Manifest for BuildExt4. Only directories, regular files and symlinks
// are accepted: a device node, FIFO or socket is refused with an error
// naming it (remove such entries first; /dev is a devtmpfs in a guest).
// An xattr ext4 cannot hold is refused the same way.
func ScanDir(ctx context.Context, dir string) (*Manifest, error) {
	m := &Manifest{}
	err := walkImage(ctx, dir, func(key, p string, _ fs.DirEntry) error {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR, syscall.S_IFREG, syscall.S_IFLNK:
		default:
			return fmt.Errorf("scan %s: %s is a %s: only directories, regular files and symlinks can be imaged; remove it first",
				dir, key, typeName(st.Mode))
		}
		x, err := xattrs(p)
		if err != nil {
			return fmt.Errorf("scan %s: %s: %w", dir, key, err)
		}
		m.Entries = append(m.Entries, Entry{Path: key, Mode: st.Mode, UID: st.Uid, GID: st.Gid,
			ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC(), Xattrs: x})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// walkImage walks the tree at dir in lexical order, calling fn with each
// path's name in the image ("/", "/etc", ...) and on the host; it stops
// when ctx ends.
func walkImage(ctx context.Context, dir string, fn func(key, p string, d fs.DirEntry) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		key := "/" + filepath.ToSlash(rel)
		if rel == "." {
			key = "/"
		}
		return fn(key, p, d)
	})
}

func typeName(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFCHR:
		return "character device"
	case syscall.S_IFBLK:
		return "block device"
	case syscall.S_IFIFO:
		return "FIFO"
	case syscall.S_IFSOCK:
		return "socket"
	}
	return fmt.Sprintf("file of type %#o", mode&syscall.S_IFMT)
}

// xattrs reads every extended attribute of p (not following symlinks).
func xattrs(p string) (map[string][]byte, error) {
	size, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.ENOTSUP) || size == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(p, buf); err != nil {
		return nil, err
	}
	var out map[string][]byte
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		if !ext4Xattr(name) {
			return nil, fmt.Errorf("xattr %q cannot be stored in ext4", name)
		}
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		val := make([]byte, n)
		if n, err = unix.Lgetxattr(p, name, val); err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[name] = val[:n]
	}
	return out, nil
}

// ContentBytes sums the sizes of the regular files under dir, each inode
// once (hard links count once): the content an image holds.
func ContentBytes(dir string) (int64, error) {
	var n int64
	type ino struct{ dev, ino uint64 }
	seen := map[ino]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			k := ino{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		n += fi.Size()
		return nil
	})
	return n, err
}
