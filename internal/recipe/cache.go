package recipe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// completeFile marks a finished cache entry; a directory without it is
// never used.
const completeFile = ".complete"

// CacheDir is where BuildCached keeps r's image under cacheRoot.
func CacheDir(cacheRoot string, r *Recipe) string {
	return filepath.Join(cacheRoot, "image-"+r.Name+"-"+r.Hash[:16])
}

// BuildCached returns the directory of r's image under cacheRoot, building
// it first unless a complete build of the same recipe hash is there.
// Concurrent callers are serialised with a lock file; the build is staged
// in a temporary directory next to it and renamed into place, so an
// interrupted build leaves no usable-looking directory. It returns whether
// it built.
func BuildCached(ctx context.Context, r *Recipe, cacheRoot string, opts Options, run StageRunner) (dir string, built bool, err error) {
	dir = CacheDir(cacheRoot, r)
	if complete(dir) {
		return dir, false, nil
	}
	if err := os.MkdirAll(cacheRoot, 0o755); err != nil {
		return "", false, err
	}
	lock, err := os.OpenFile(filepath.Join(cacheRoot, "."+filepath.Base(dir)+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", false, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", false, err
	}
	if complete(dir) { // another caller built it while we waited
		return dir, false, nil
	}
	if _, err := os.Lstat(dir); err == nil { // a crashed run's leftover
		if err := removeTree(dir); err != nil {
			return "", false, err
		}
	}
	tmp, err := os.MkdirTemp(cacheRoot, "."+filepath.Base(dir)+".tmp-*")
	if err != nil {
		return "", false, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, removeTree(tmp))
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", false, err
	}
	res, err := Build(ctx, r, tmp, opts, run)
	if err != nil {
		return "", false, err
	}
	// Readable by a daemon that does not run as root (it registers the file).
	if err := os.Chmod(res.RootFS, 0o644); err != nil {
		return "", false, err
	}
	if err := os.WriteFile(filepath.Join(tmp, completeFile), nil, 0o644); err != nil {
		return "", false, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", false, fmt.Errorf("rename %s to %s: %w", tmp, dir, err)
	}
	return dir, true, nil
}

func complete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, completeFile))
	return err == nil
}
