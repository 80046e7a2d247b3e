package image

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Files of a managed image directory.
const (
	RootFSFile   = "rootfs.ext4"
	MetaFile     = "image.json"
	WorkSeedFile = "work-seed.tar"
)

const (
	stagingPrefix = ".staging-"
	trashPrefix   = ".deleting-"
)

// Store is banger's managed image directory: one directory per image,
// <Dir>/<name>/. A new image is built in a staging directory <Dir>/.staging-*
// on the same file system and renamed into place in one step, so an image
// directory is either complete or absent.
type Store struct {
	Dir string
}

// Stage makes a new, empty staging directory.
func (s Store) Stage() (string, error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(s.Dir, stagingPrefix+"*")
}

// Path is the directory image name has (or will have) in the store.
func (s Store) Path(name string) string { return filepath.Join(s.Dir, name) }

// Commit renames a staging directory to the image's directory; it fails,
// changing nothing, when that exists.
func (s Store) Commit(staging, name string) (string, error) {
	dst := s.Path(name)
	if err := unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			return "", fmt.Errorf("image directory %s already exists; delete the image first", dst)
		}
		return "", fmt.Errorf("move %s into place: %w", staging, err)
	}
	return dst, nil
}

// Remove deletes an image directory: renamed aside first (so a crash
// midway never leaves a half-deleted image under its name), then removed.
// A missing directory is not an error.
func (s Store) Remove(name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return fmt.Errorf("image store: bad name %q", name)
	}
	trash, err := os.MkdirTemp(s.Dir, trashPrefix+"*")
	if err != nil {
		return err
	}
	aside := filepath.Join(trash, name)
	if err := os.Rename(s.Path(name), aside); err != nil {
		os.Remove(trash)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	return os.RemoveAll(trash)
}

// CleanStale removes staging and half-deleted directories left by a
// daemon that died mid-operation. Call it before any operation runs.
func (s Store) CleanStale() error {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), stagingPrefix) || strings.HasPrefix(e.Name(), trashPrefix) {
			errs = append(errs, os.RemoveAll(filepath.Join(s.Dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists entries of the store directory that are not image
// directories in names (for tests and doctor).
func (s Store) Leftovers(names map[string]bool) ([]string, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	var out []string
	for _, e := range ents {
		if !names[e.Name()] {
			out = append(out, e.Name())
		}
	}
	return out, err
}
