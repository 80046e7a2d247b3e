package oci

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// errEscape is wrapped by every refusal of a path that would leave the tree.
var errEscape = errors.New("escapes the image root")

// maxLinks bounds symlink expansions in one resolution (the kernel's 40).
const maxLinks = 40

// cleanName turns a layer entry name into a relative path inside the tree
// ("" is the root). Absolute names are made relative ("/etc/x" is
// "etc/x", as Docker and containerd do); a name whose ".." components climb
// above the root is refused.
func cleanName(n string) (string, error) {
	if strings.IndexByte(n, 0) >= 0 {
		return "", errors.New("name contains a NUL byte")
	}
	c := path.Clean(strings.TrimLeft(n, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("name %q %w", n, errEscape)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// splitPath splits a slash path into components, dropping empty and "."
// ones but keeping "..".
func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// joinPath joins physical components ("" for none).
func joinPath(comps []string) string { return strings.Join(comps, "/") }

// child returns dir/name for a physical directory path ("" is the root).
func child(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// parentOf returns the directory of a physical path ("" for top level).
func parentOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

// resolve maps rel, a path as the image sees it, to a physical path in the
// staging tree, following symlinks the way the guest kernel will once the
// tree is its root: an absolute target starts again from the tree's root,
// ".." goes to the physical parent. Unlike the kernel (which stops ".." at
// "/"), climbing above the root is an error: such a path was built to
// reach outside. The last component is followed only when followLast is
// set. It returns the physical components and how many of them exist; the
// components after that do not exist yet (a missing component followed by
// ".." is an error, as in the kernel).
//
// Lookups go through os.Root on physical, symlink-free prefixes, so even a
// bug here cannot reach outside the staging directory.
func (f *flattener) resolve(rel string, followLast bool) ([]string, int, error) {
	queue := splitPath(rel)
	var out []string
	exist, links, missing := 0, 0, false
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		if c == ".." {
			if missing {
				return nil, 0, fmt.Errorf("%q: a directory on the way does not exist", rel)
			}
			if len(out) == 0 {
				return nil, 0, fmt.Errorf("path %q %w (following symlinks)", rel, errEscape)
			}
			out = out[:len(out)-1]
			exist = len(out)
			continue
		}
		out = append(out, c)
		if missing {
			continue
		}
		p := joinPath(out)
		if f.dirs[p] {
			exist = len(out)
			continue
		}
		fi, err := f.root.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			missing = true
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		last := len(queue) == 0
		if fi.Mode()&fs.ModeSymlink != 0 && (!last || followLast) {
			if links++; links > maxLinks {
				return nil, 0, fmt.Errorf("%q: too many levels of symbolic links", rel)
			}
			target, err := f.root.Readlink(p)
			if err != nil {
				return nil, 0, err
			}
			out = out[:len(out)-1]
			if path.IsAbs(target) {
				out = out[:0]
			}
			queue = append(splitPath(target), queue...)
			exist = len(out)
			continue
		}
		if !last && !fi.IsDir() {
			return nil, 0, fmt.Errorf("/%s is not a directory: %w", p, errNotDir)
		}
		if fi.IsDir() {
			f.dirs[p] = true
		}
		exist = len(out)
	}
	return out, exist, nil
}

var errNotDir = errors.New("not a directory")
