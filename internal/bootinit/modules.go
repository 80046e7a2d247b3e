package bootinit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// modulesMountPoint returns the directory, inside the root at root, where
// the modules tree of release is mounted: /lib/modules/RELEASE with its
// existing components' symlinks resolved inside the root (Debian's
// /lib -> usr/lib, absolute or relative). Missing components are created
// as plain directories (the only write into the image); a path that is a
// dangling symlink or not a directory is an error.
func modulesMountPoint(root, release string) (string, error) {
	if release == "" || release == "." || release == ".." || filepath.Base(release) != release {
		return "", fmt.Errorf("kernel release %q: not a directory name", release)
	}
	p := "/lib/modules/" + release
	var missing []string
	dir := ""
	for {
		r, err := resolveIn(root, p)
		if err == nil {
			dir = r
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || p == "/" {
			return "", fmt.Errorf("/lib/modules/%s in the root: %w", release, err)
		}
		missing = append([]string{filepath.Base(p)}, missing...)
		p = filepath.Dir(p)
	}
	for _, name := range missing {
		dir = filepath.Join(dir, name)
		// Mkdir does not follow a final symlink: a dangling one is EEXIST.
		if err := os.Mkdir(filepath.Join(root, dir), 0o755); err != nil {
			return "", fmt.Errorf("/lib/modules/%s in the root: %w", release, err)
		}
	}
	st, err := os.Lstat(filepath.Join(root, dir))
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", fmt.Errorf("/lib/modules/%s in the root is %s, not a directory", release, dir)
	}
	return dir, nil
}

// mountModules mounts the modules image named by spec read-only on
// /lib/modules/RELEASE in the root at root and returns the host path of the
// mount point.
func mountModules(root, spec, release string) (string, error) {
	dev, err := waitDevice(spec, workWait)
	if err != nil {
		return "", err
	}
	dir, err := modulesMountPoint(root, release)
	if err != nil {
		return "", err
	}
	target := filepath.Join(root, dir)
	if err := mount(dev, target, "ext4", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return "", err
	}
	return target, nil
}
