package guest

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"banger/internal/agent"

	"golang.org/x/sys/unix"
)

// put extracts the host's tar frames under dest.
func (s *Server) put(dest string, br *bufio.Reader, st io.Writer) {
	fr := &frameReader{r: br}
	n, err := func() (int, error) {
		if !filepath.IsAbs(dest) {
			return 0, fmt.Errorf("destination %q is not an absolute path", dest)
		}
		if err := os.MkdirAll(dest, 0o755); err != nil {
			return 0, err
		}
		n, err := Extract(dest, fr)
		if err != nil {
			return n, err
		}
		// Whatever follows the end-of-archive blocks (padding).
		if _, err := io.Copy(io.Discard, fr); err != nil {
			return n, err
		}
		return n, nil
	}()
	resp := agent.Response{Entries: n}
	if err != nil {
		resp.Error = err.Error()
	}
	agent.WriteJSONLine(st, resp)
}

// frameReader reads the data of FrameData frames until FrameEnd.
type frameReader struct {
	r   *bufio.Reader
	buf []byte
	err error
}

func (f *frameReader) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		typ, payload, err := agent.ReadFrame(f.r)
		switch {
		case err != nil:
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			f.err = fmt.Errorf("receiving the archive: %w", err)
		case typ == agent.FrameData:
			f.buf = payload
		case typ == agent.FrameEnd:
			f.err = io.EOF
		case typ == agent.FrameAbort:
			f.err = fmt.Errorf("aborted by the host: %s", payload)
		default:
			f.err = fmt.Errorf("unexpected frame %q in the archive", typ)
		}
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

// EscapeError is an archive entry refused because it would land outside the
// destination.
type EscapeError struct {
	Entry  string
	Reason string
}

func (e *EscapeError) Error() string {
	return fmt.Sprintf("entry %q refused: %s", e.Entry, e.Reason)
}

// Extract extracts the tar stream r under dest, which must exist, and
// returns the number of entries extracted. See package agent's
// documentation of put for what is refused and what is kept.
func Extract(dest string, r io.Reader) (int, error) {
	root, err := unix.Open(dest, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: dest, Err: err}
	}
	defer unix.Close(root)
	x := &extractor{root: root, dest: filepath.Clean(dest)}
	tr := tar.NewReader(r)
	n := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, fmt.Errorf("reading the archive: %w", err)
		}
		if err := x.entry(hdr, tr); err != nil {
			var ee *EscapeError
			if errors.As(err, &ee) {
				return n, err
			}
			return n, fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		n++
	}
	// Directory mtimes last: creating their children changed them.
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		pfd, err := x.openDir(path.Dir(d.name), false)
		if err != nil {
			return n, fmt.Errorf("entry %q: %w", d.hdr.Name, err)
		}
		err = setTimes(pfd, path.Base(d.name), d.hdr)
		unix.Close(pfd)
		if err != nil {
			return n, fmt.Errorf("entry %q: %w", d.hdr.Name, err)
		}
	}
	return n, nil
}

type extractor struct {
	root int
	dest string
	dirs []struct {
		name string
		hdr  *tar.Header
	}
}

// cleanName validates an entry name (or a hard link's target) and returns
// it cleaned, relative to dest.
func cleanName(entry, name string) (string, error) {
	if name == "" {
		return "", &EscapeError{entry, "empty path"}
	}
	if strings.HasPrefix(name, "/") {
		return "", &EscapeError{entry, fmt.Sprintf("absolute path %q", name)}
	}
	if strings.ContainsRune(name, 0) {
		return "", &EscapeError{entry, "NUL in path"}
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", &EscapeError{entry, fmt.Sprintf("path %q contains \"..\"", name)}
		}
	}
	return path.Clean(name), nil
}

// within reports whether the absolute path p is dest or under it.
func within(dest, p string) bool {
	p = path.Clean(p)
	return dest == "/" || p == dest || strings.HasPrefix(p, dest+"/")
}

func (x *extractor) entry(hdr *tar.Header, tr io.Reader) error {
	name, err := cleanName(hdr.Name, hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		return nil // dest itself is left as it is
	}
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		t := hdr.Linkname
		if t == "" {
			return &EscapeError{hdr.Name, "symlink with an empty target"}
		}
		if path.IsAbs(t) {
			if !within(x.dest, t) {
				return &EscapeError{hdr.Name, fmt.Sprintf("symlink target %q is outside the destination", t)}
			}
		} else if j := path.Join(path.Dir(name), t); j == ".." || strings.HasPrefix(j, "../") {
			return &EscapeError{hdr.Name, fmt.Sprintf("symlink target %q leads outside the destination", t)}
		}
	case tar.TypeLink:
		t, err := cleanName(hdr.Name, hdr.Linkname)
		if err != nil {
			return &EscapeError{hdr.Name, "hard link target: " + err.(*EscapeError).Reason}
		}
		if t == "." {
			return &EscapeError{hdr.Name, "hard link to the destination directory"}
		}
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeReg, tar.TypeDir, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		return fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
	}

	pfd, err := x.openDir(path.Dir(name), true)
	if err != nil {
		var ee *EscapeError
		if errors.As(err, &ee) {
			ee.Entry = hdr.Name
		}
		return err
	}
	defer unix.Close(pfd)
	base := path.Base(name)

	// Clear the way: a new entry replaces what is there (a directory only by
	// a directory, or if it is empty).
	var st unix.Stat_t
	keepDir := false
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		switch {
		case isDir && hdr.Typeflag == tar.TypeDir:
			keepDir = true
		case isDir:
			if err := unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR); err != nil {
				return fmt.Errorf("replacing directory %s: %w", name, err)
			}
		default:
			if err := unix.Unlinkat(pfd, base, 0); err != nil {
				return fmt.Errorf("replacing %s: %w", name, err)
			}
		}
	} else if err != unix.ENOENT {
		return fmt.Errorf("stat %s: %w", name, err)
	}

	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !keepDir {
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return fmt.Errorf("mkdir: %w", err)
			}
		}
		x.dirs = append(x.dirs, struct {
			name string
			hdr  *tar.Header
		}{name, hdr})
	case tar.TypeReg:
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		f := os.NewFile(uintptr(fd), name)
		_, err = io.Copy(f, tr)
		if err == nil {
			err = f.Chown(hdr.Uid, hdr.Gid)
		}
		if err == nil {
			err = f.Chmod(unixMode(mode))
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		return setTimes(pfd, base, hdr)
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
		return setTimes(pfd, base, hdr)
	case tar.TypeLink:
		t, _ := cleanName(hdr.Name, hdr.Linkname)
		tfd, err := x.openDir(path.Dir(t), false)
		if err != nil {
			var ee *EscapeError
			if errors.As(err, &ee) {
				return &EscapeError{hdr.Name, fmt.Sprintf("hard link target %q: %s", hdr.Linkname, ee.Reason)}
			}
			return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
		}
		defer unix.Close(tfd)
		if err := unix.Linkat(tfd, path.Base(t), pfd, base, 0); err != nil {
			return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
		}
		return nil // the target's metadata is the link's
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		typ := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(pfd, base, typ|0o600, int(dev)); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
	}
	// Directories and special files: owner, then mode (chown clears
	// setuid/setgid). Directory times are set at the end.
	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmodat(pfd, base, mode, 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if hdr.Typeflag != tar.TypeDir {
		return setTimes(pfd, base, hdr)
	}
	return nil
}

// unixMode converts permission and setuid/setgid/sticky bits to fs.FileMode.
func unixMode(m uint32) fs.FileMode {
	fm := fs.FileMode(m & 0o777)
	if m&unix.S_ISUID != 0 {
		fm |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		fm |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		fm |= fs.ModeSticky
	}
	return fm
}

func setTimes(dirfd int, base string, hdr *tar.Header) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(dirfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// openDir opens the directory rel (relative to dest) for *at calls,
// refusing any resolution that leaves dest (through "..", an absolute
// symlink or a symlink leading outside). With create, missing directories
// are made (0755, root-owned).
func (x *extractor) openDir(rel string, create bool) (int, error) {
	if rel == "." || rel == "" {
		return unix.Openat(x.root, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	how := &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	}
	var fd int
	var err error
	for range 10 {
		fd, err = unix.Openat2(x.root, rel, how)
		if err != unix.EAGAIN && err != unix.EINTR {
			break
		}
	}
	if err == unix.ENOENT && create {
		pfd, perr := x.openDir(path.Dir(rel), true)
		if perr != nil {
			return -1, perr
		}
		merr := unix.Mkdirat(pfd, path.Base(rel), 0o755)
		unix.Close(pfd)
		if merr != nil && merr != unix.EEXIST {
			return -1, fmt.Errorf("mkdir %s: %w", rel, merr)
		}
		fd, err = unix.Openat2(x.root, rel, how)
	}
	switch err {
	case nil:
		return fd, nil
	case unix.EXDEV, unix.ELOOP:
		return -1, &EscapeError{rel, fmt.Sprintf("%s leads outside the destination (through a symlink)", rel)}
	case unix.ENOSYS:
		return -1, errors.New("the guest kernel lacks openat2 (Linux 5.6 or later is needed)")
	default:
		return -1, &os.PathError{Op: "open", Path: rel, Err: err}
	}
}

// get sends a tar of paths.
func (s *Server) get(paths []string, st io.Writer) {
	for _, p := range paths {
		var err error
		switch {
		case !filepath.IsAbs(p):
			err = fmt.Errorf("path %q is not absolute", p)
		case filepath.Clean(p) == "/":
			err = errors.New("refusing to archive /")
		default:
			_, err = os.Lstat(p)
		}
		if err != nil {
			agent.WriteJSONLine(st, agent.Response{Error: err.Error()})
			return
		}
	}
	if len(paths) == 0 {
		agent.WriteJSONLine(st, agent.Response{Error: "no paths"})
		return
	}
	if agent.WriteJSONLine(st, agent.Response{}) != nil {
		return
	}
	fw := &agent.FrameWriter{W: st}
	bw := bufio.NewWriterSize(agent.DataWriter{F: fw, Typ: agent.FrameData}, agent.DataChunk)
	err := Archive(bw, paths)
	if err == nil {
		err = bw.Flush()
	}
	var end agent.EndStatus
	if err != nil {
		end.Error = err.Error()
	}
	fw.JSON(agent.FrameExit, end)
}

// Archive writes a tar of paths to w, each under its base name; symlinks
// are archived, not followed; sockets are skipped; a file with several links
// is archived once, then as hard links.
func Archive(w io.Writer, paths []string) error {
	tw := tar.NewWriter(w)
	type devIno struct{ dev, ino uint64 }
	links := map[devIno]string{}
	for _, root := range paths {
		root = filepath.Clean(root)
		base := filepath.Base(root)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if fi.Mode()&fs.ModeSocket != 0 {
				return nil
			}
			var target string
			if fi.Mode()&fs.ModeSymlink != 0 {
				if target, err = os.Readlink(p); err != nil {
					return err
				}
			}
			hdr, err := tar.FileInfoHeader(fi, target)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			name := base + filepath.ToSlash(strings.TrimPrefix(p, root))
			if fi.IsDir() {
				name += "/"
			}
			hdr.Name = name
			hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
			if sys, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && sys.Nlink > 1 {
				k := devIno{uint64(sys.Dev), sys.Ino}
				if first, seen := links[k]; seen {
					hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				} else {
					links[k] = name
				}
			}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
				return nil
			}
			f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			n, err := io.Copy(tw, io.LimitReader(f, hdr.Size))
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if n != hdr.Size {
				return fmt.Errorf("%s: shrank while being archived", p)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return tw.Close()
}
