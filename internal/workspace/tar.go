package workspace

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"
	"time"
)

// errStreamAborted ends a producer whose consumer (the guest command) has
// already exited.
var errStreamAborted = errors.New("workspace: guest command exited before reading all input")

// tarSender writes entries read from the host into a tar stream.
type tarSender struct {
	tw      *tar.Writer
	dirs    map[string]bool // directory names already written
	count   func(n int64)   // content bytes written, may be nil
	vanish  []string        // planned files that disappeared before sending
	written int             // non-directory entries written
}

func newTarSender(w io.Writer, count func(int64)) *tarSender {
	return &tarSender{tw: tar.NewWriter(w), dirs: map[string]bool{}, count: count}
}

func (s *tarSender) close() error { return s.tw.Close() }

// parents writes headers for the directories above name (a path relative
// to hostRoot) that are not written yet, with the host directories' modes.
func (s *tarSender) parents(hostRoot, name string) error {
	dir := path.Dir(name)
	if dir == "." || s.dirs[dir] {
		return nil
	}
	if err := s.parents(hostRoot, dir); err != nil {
		return err
	}
	mode, mtime := fs.FileMode(0o755), time.Now()
	if fi, err := os.Lstat(filepath.Join(hostRoot, filepath.FromSlash(dir))); err == nil && fi.IsDir() {
		mode, mtime = fi.Mode().Perm(), fi.ModTime()
	}
	return s.dir(dir, mode, mtime)
}

func (s *tarSender) dir(name string, mode fs.FileMode, mtime time.Time) error {
	if s.dirs[name] {
		return nil
	}
	s.dirs[name] = true
	return s.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: int64(mode.Perm()), ModTime: mtime})
}

// entry writes one planned entry under the tar name name, reading abs.
// What is sent is what is on disk now: sizes, modes and link targets are
// read again, so a file edited since Plan is sent whole and consistent.
func (s *tarSender) entry(name, abs string, e Entry) error {
	switch e.Kind {
	case KindDir:
		mode, mtime := e.Mode, time.Now()
		if fi, err := os.Lstat(abs); err == nil && fi.IsDir() {
			mode, mtime = fi.Mode().Perm(), fi.ModTime()
		}
		if mode == 0 {
			mode = 0o755
		}
		return s.dir(name, mode, mtime)
	case KindSymlink:
		fi, err := os.Lstat(abs)
		if errors.Is(err, fs.ErrNotExist) {
			s.vanish = append(s.vanish, e.Path)
			return nil
		}
		if err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return fmt.Errorf("workspace: %s changed while copying (no longer a symlink)", abs)
		}
		target, err := os.Readlink(abs)
		if err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		s.written++
		return s.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: fi.ModTime()})
	case KindFile:
		return s.file(name, abs, e.Path)
	}
	return fmt.Errorf("workspace: cannot send %s (%v)", abs, e.Kind)
}

func (s *tarSender) file(name, abs, rel string) error {
	// O_NOFOLLOW: a file replaced by a symlink since Plan is not followed.
	// O_NONBLOCK: nor does a fifo put in its place block the open.
	f, err := os.OpenFile(abs, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		s.vanish = append(s.vanish, rel)
		return nil
	}
	if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("workspace: %s changed while copying (no longer a regular file)", abs)
	}
	size := fi.Size()
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(fi.Mode().Perm()), Size: size, ModTime: fi.ModTime()}
	if err := s.tw.WriteHeader(hdr); err != nil {
		return err
	}
	var r io.Reader = io.LimitReader(f, size)
	if s.count != nil {
		r = &countingReader{r: r, count: s.count}
	}
	n, err := io.Copy(s.tw, r)
	if err != nil {
		return err
	}
	if n < size {
		return fmt.Errorf("workspace: %s shrank while copying; retry", abs)
	}
	s.written++
	return nil
}

type countingReader struct {
	r     io.Reader
	count func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.count(int64(n))
	}
	return n, err
}
