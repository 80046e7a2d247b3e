package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// File is a file or directory to place on a work disk.
type File struct {
	Path     string      // relative to the disk root, e.g. ".ssh/authorized_keys"
	Mode     os.FileMode // permissions, plus os.ModeDir for directories
	Data     []byte      // content of a regular file
	UID, GID int
}

// CreateWorkDisk makes an ext4 image of sizeBytes at path, labelled
// banger-work, holding a copy of seedDir (if not "") and then files. Its
// root directory (the guest's /root) is root-owned with mode 0700, seed
// entries are root-owned, and files get their exact mode and owner even
// when the daemon is not root. The image is built next to path and renamed
// into place: on error nothing remains, and an existing path is never
// replaced.
func CreateWorkDisk(ctx context.Context, path string, sizeBytes int64, seedDir string, files []File) (err error) {
	if sizeBytes <= 0 {
		return fmt.Errorf("work disk size %d: must be positive", sizeBytes)
	}
	if err := checkFree(path); err != nil {
		return err
	}
	dir, name := filepath.Dir(path), filepath.Base(path)
	stage, err := os.MkdirTemp(dir, "."+name+".stage-*")
	if err != nil {
		return err
	}
	defer removeTree(stage)
	if seedDir != "" {
		if err := copyTree(seedDir, stage); err != nil {
			return fmt.Errorf("seed %s: %w", seedDir, err)
		}
	}
	var fileCmds []string
	for _, f := range files {
		c, err := stageFile(stage, f)
		if err != nil {
			return err
		}
		fileCmds = append(fileCmds, c...)
	}
	// mkfs -d makes the root 0755 and copies the staging owner (us).
	cmds := []string{"sif / mode 040700"}
	if os.Geteuid() != 0 {
		c, err := chownAllRoot(stage)
		if err != nil {
			return err
		}
		cmds = append(cmds, c...)
	}
	cmds = append(cmds, fileCmds...)

	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	err = tmp.Truncate(sizeBytes)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// No size argument: mkfs would read it in 1 KiB blocks; the file is sized.
	if _, err := run(ctx, "mkfs.ext4", "-q", "-F", "-L", "banger-work", "-E", "root_owner=0:0", "-d", stage, tmp.Name()); err != nil {
		return err
	}
	if _, err := debugfsScript(ctx, tmp.Name(), true, nil, cmds); err != nil {
		return err
	}
	return renameNoReplace(tmp.Name(), path)
}

// stageFile writes f under stage and returns the debugfs commands that
// set its exact mode and owner in the image.
func stageFile(stage string, f File) ([]string, error) {
	p, err := diskPath(f.Path)
	if err != nil {
		return nil, err
	}
	mode, err := inodeMode(f.Mode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Path, err)
	}
	// Through os.Root: a seed (an image's /root) may hold symlinks, and
	// none may lead a write out of the staging directory.
	root, err := os.OpenRoot(stage)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	local := strings.TrimPrefix(p, "/")
	if f.Mode.IsDir() {
		err = root.MkdirAll(local, 0o755)
	} else if err = root.MkdirAll(filepath.Dir(local), 0o755); err == nil {
		err = root.WriteFile(local, f.Data, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("work disk file %s: %w", f.Path, err)
	}
	return setAttrs(p, mode, f.UID, f.GID), nil
}

// WriteFiles writes files into the ext4 image img without mounting it,
// creating missing parent directories (root-owned, 0755) and replacing
// existing regular files. Conflicts (a file where a directory is wanted, or
// the reverse) are found before anything is changed. The image must not be
// in use by a running VM.
func WriteFiles(ctx context.Context, img string, files []File) error {
	if _, err := fileSize(img); err != nil {
		return err
	}
	type entry struct {
		File
		path string
		mode uint32
	}
	var entries []entry
	var probe []string
	for _, f := range files {
		p, err := diskPath(f.Path)
		if err != nil {
			return err
		}
		mode, err := inodeMode(f.Mode)
		if err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
		entries = append(entries, entry{f, p, mode})
		probe = append(probe, ancestors(p)...)
	}
	if len(entries) == 0 {
		return nil
	}
	types, err := inodeTypes(ctx, img, probe)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "banger-writefiles-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	var cmds []string
	mkdir := func(p string) error {
		switch types[p] {
		case "directory":
			return nil
		case "":
			types[p] = "directory"
			cmds = append(cmds, "mkdir "+q(p))
			return nil
		}
		return fmt.Errorf("%s: %s exists and is not a directory (%s)", img, p, types[p])
	}
	for i, e := range entries {
		parents := ancestors(e.path)
		for _, d := range parents[:len(parents)-1] {
			if err := mkdir(d); err != nil {
				return err
			}
		}
		if e.Mode.IsDir() {
			if err := mkdir(e.path); err != nil {
				return err
			}
		} else {
			switch types[e.path] {
			case "regular", "symlink":
				cmds = append(cmds, "rm "+q(e.path))
			case "":
			default:
				return fmt.Errorf("%s: %s exists and is not a regular file (%s)", img, e.path, types[e.path])
			}
			types[e.path] = "regular"
			local := filepath.Join(tmp, fmt.Sprint(i))
			if err := os.WriteFile(local, e.Data, 0o600); err != nil {
				return err
			}
			cmds = append(cmds, "cd "+q(filepath.Dir(e.path)), "write "+q(local)+" "+q(filepath.Base(e.path)), "cd /")
		}
		cmds = append(cmds, setAttrs(e.path, e.mode, e.UID, e.GID)...)
	}
	_, err = debugfsScript(ctx, img, true, nil, cmds)
	return err
}

// ancestors lists "/a", "/a/b", "/a/b/c" for "/a/b/c": the path and its parents.
func ancestors(p string) []string {
	var out []string
	for d := p; d != "/"; d = filepath.Dir(d) {
		out = append([]string{d}, out...)
	}
	return out
}

// ReadFile returns the content of path inside the ext4 image img.
func ReadFile(ctx context.Context, img, path string) ([]byte, error) {
	p, err := diskPath(path)
	if err != nil {
		return nil, err
	}
	if _, err := fileSize(img); err != nil {
		return nil, err
	}
	return debugfs(ctx, nil, "-R", "cat "+q(p), img)
}

// ExtractDir copies directory dir of the ext4 image img (e.g. an image's
// /root, its work seed) into the existing directory parent without
// mounting the image (debugfs rdump keeps modes, and owners when run as
// root), and returns the copy's path, parent/<base of dir>. It returns ""
// when img has no such directory.
func ExtractDir(ctx context.Context, img, dir, parent string) (string, error) {
	p, err := diskPath(dir)
	if err != nil {
		return "", err
	}
	types, err := inodeTypes(ctx, img, []string{p})
	if err != nil {
		return "", err
	}
	if types[p] != "directory" {
		return "", nil
	}
	if strings.ContainsAny(parent, "\"\\") {
		return "", fmt.Errorf("%s: quotes and backslashes are not supported in the directory name", parent)
	}
	// Without root rdump cannot give the copy the image's owners; the work
	// disk makes seed entries root-owned anyway, so that is not an error.
	var ignore *regexp.Regexp
	if os.Geteuid() != 0 {
		ignore = chownRefused
	}
	if _, err := debugfs(ctx, ignore, "-R", "rdump "+q(p)+" "+q(parent), img); err != nil {
		return "", err
	}
	return filepath.Join(parent, filepath.Base(p)), nil
}

// chownRefused matches debugfs rdump's complaint when it may not chown.
var chownRefused = regexp.MustCompile(`Operation not permitted while changing ownership of `)

// GrowWorkDisk grows the image img and its ext4 filesystem to newSize.
// Shrinking is refused. Re-running after a failure completes the resize.
func GrowWorkDisk(ctx context.Context, img string, newSize int64) error {
	size, err := fileSize(img)
	if err != nil {
		return err
	}
	if newSize < size {
		return fmt.Errorf("work disk %s is %s: refusing to shrink it to %s (work disks only grow)",
			img, formatSize(size), formatSize(newSize))
	}
	// e2fsck first: resize2fs insists on a freshly checked filesystem.
	if _, err := run(ctx, "e2fsck", "-fy", img); err != nil && exitCode(err) != 1 {
		return err
	}
	if newSize > size {
		if err := os.Truncate(img, newSize); err != nil {
			return err
		}
	}
	_, err = run(ctx, "resize2fs", img)
	return err
}

// formatSize prints n in the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		s     string
		shift uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n > 0 && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.s)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// copyTree copies the tree at src into the existing directory dst
// (directories, regular files and symlinks, with permissions).
func copyTree(src, dst string) error {
	type dirMode struct {
		path string
		mode os.FileMode
	}
	var dirs []dirMode // chmod last: a read-only seed dir must stay writable while filled
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			dirs = append(dirs, dirMode{target, info.Mode()})
			return os.Mkdir(target, 0o700)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			return copyFile(p, target, info.Mode())
		}
		return fmt.Errorf("%s: unsupported file type %v", p, d.Type())
	})
	for i := len(dirs) - 1; i >= 0 && err == nil; i-- {
		err = os.Chmod(dirs[i].path, permBits(dirs[i].mode))
	}
	return err
}

func permBits(m os.FileMode) os.FileMode {
	return m & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Chmod(dst, permBits(mode))
}

// chownAllRoot returns debugfs commands giving every staged entry to root.
func chownAllRoot(stage string) ([]string, error) {
	var cmds []string
	err := filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == stage {
			return err
		}
		rel, _ := filepath.Rel(stage, p)
		dp, err := diskPath(rel)
		if err != nil {
			return err
		}
		cmds = append(cmds, "sif "+q(dp)+" uid 0", "sif "+q(dp)+" gid 0")
		return nil
	})
	return cmds, err
}

// removeTree deletes dir even if it holds read-only directories.
func removeTree(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	_ = os.RemoveAll(dir)
}

// renameNoReplace renames atomically, failing if newpath exists.
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if err := checkFree(newpath); err != nil {
			return err
		}
		return os.Rename(oldpath, newpath)
	}
	if err != nil {
		return fmt.Errorf("rename %s to %s: %w", oldpath, newpath, err)
	}
	return nil
}
