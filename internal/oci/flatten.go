package oci

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
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

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."     // AUFS bookkeeping (.wh..wh.plnk, ...)
	opaqueMarker   = ".wh..wh..opq" // the directory hides lower layers' content
	xattrPAXPrefix = "SCHILY.xattr."
)

// Flatten applies img's layers, base first, into stagingDir and returns
// the Manifest that BuildExt4 needs.
//
// stagingDir must not exist or be an empty directory; Flatten creates it
// with mode 0700. On error it removes what it extracted (and the directory
// if it created it), so nothing is left behind.
//
// Semantics, as the OCI image spec and Docker/containerd apply layers:
//   - ".wh.NAME" deletes NAME from lower layers; ".wh..wh..opq" makes its
//     directory hide every lower-layer entry (entries of the same layer stay,
//     whatever their order in the tar); other ".wh..wh." names are skipped.
//   - An entry replaces whatever is at its path, except that a directory
//     over a directory merges. Files are unlinked before they are written,
//     so a hardlink made in a lower layer keeps its old content.
//   - Parent directories are resolved the way the guest will see them:
//     symlinks are followed inside the tree, an absolute target starting
//     from the tree's root. Missing parents are created (root:root 0755).
//
// Refused with an error naming the layer and the entry (nothing is ever
// written outside stagingDir, not even through a symlink):
//   - a name whose ".." components climb above the root ("../evil").
//     Absolute names are accepted and made relative ("/abs/x" is "abs/x").
//   - a symlink whose relative target climbs above the root from where the
//     symlink is ("link -> ../../outside" at the top). Absolute targets are
//     kept as they are: the guest resolves them inside its own root.
//   - a hardlink whose target climbs above the root, does not exist, or is
//     a directory.
//   - an entry whose path, following symlinks, climbs above the root.
//
// Skipped with a Note: device nodes (they need root to create; a VM's
// /dev is a devtmpfs anyway), unknown entry types, xattrs ext4 cannot hold,
// and names containing a newline or carriage return (debugfs scripts are
// line based). FIFOs are staged as empty files and made FIFOs by BuildExt4.
//
// Ownership, exact modes (setuid, setgid, sticky), xattrs and modification
// times go into the Manifest. Staged files are owned by the caller, files
// 0600 and directories 0700, whatever the image says; modification times
// are also set on the staged files. Each layer's uncompressed content is
// checked against its diff ID.
func Flatten(ctx context.Context, img *Image, stagingDir string) (_ *Manifest, err error) {
	created, err := prepareStaging(stagingDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cleanStaging(stagingDir, created)
		}
	}()
	root, err := os.OpenRoot(stagingDir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f := &flattener{
		ctx:   ctx,
		root:  root,
		dir:   stagingDir,
		attrs: map[string]Entry{"": {Mode: ModeDir | 0o755, ModTime: time.Unix(0, 0)}},
		dirs:  map[string]bool{},
	}
	for i, l := range img.Layers {
		if err := f.applyLayer(i+1, l); err != nil {
			return nil, err
		}
	}
	return f.finish()
}

// prepareStaging makes sure dir is an empty directory, creating it (0700)
// when missing; created reports whether it did.
func prepareStaging(dir string) (created bool, err error) {
	if dir == "" {
		return false, errors.New("flatten: no staging directory")
	}
	err = os.Mkdir(dir, 0o700)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return false, err
	}
	d, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if err != nil && err != io.EOF {
		return false, fmt.Errorf("staging directory %s: %w", dir, err)
	}
	if len(names) > 0 {
		return false, fmt.Errorf("staging directory %s is not empty", dir)
	}
	return false, os.Chmod(dir, 0o700)
}

// cleanStaging removes what Flatten put in dir (and dir if it made it).
func cleanStaging(dir string, created bool) {
	if created {
		_ = os.RemoveAll(dir)
		return
	}
	names, _ := func() ([]string, error) {
		d, err := os.Open(dir)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		return d.Readdirnames(-1)
	}()
	for _, n := range names {
		_ = os.RemoveAll(filepath.Join(dir, n))
	}
}

// flattener holds the state of one Flatten. Physical paths are relative
// to the staging root with "/" separators; "" is the root.
type flattener struct {
	ctx  context.Context
	root *os.Root
	dir  string
	// attrs holds the intended metadata of every path ever staged; stale
	// keys (removed paths) are dropped by finish's walk, and every
	// (re)creation overwrites its key.
	attrs map[string]Entry
	// dirs caches paths known to be real directories (cleared whenever a
	// directory is removed).
	dirs map[string]bool
	// layer marks the paths this layer created or touched, and their
	// parents: a whiteout or opaque marker never hides those.
	layer   map[string]bool
	layerNo int
	notes   []Note
	entry   string // name of the entry being applied, for notes
}

// applyLayer decompresses one cached layer blob, checks its diff ID, and
// applies its entries.
func (f *flattener) applyLayer(n int, l Layer) error {
	f.layer = map[string]bool{}
	f.layerNo = n
	file, err := os.Open(l.Path)
	if err != nil {
		return fmt.Errorf("layer %d (%s): %w", n, l.Digest, err)
	}
	defer file.Close()
	br := bufio.NewReaderSize(file, 1<<20)
	magic, _ := br.Peek(4)
	var rd io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer %d (%s): %w", n, l.Digest, err)
		}
		defer gz.Close()
		rd = gz
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer %d (%s): %w", n, l.Digest, err)
		}
		defer zr.Close()
		rd = zr
	}
	hash := sha256.New()
	tee := io.TeeReader(rd, hash)
	tr := tar.NewReader(tee)
	for {
		if err := f.ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("layer %d (%s): reading tar: %w", n, l.Digest, err)
		}
		f.entry = hdr.Name
		if err := f.apply(hdr, tr); err != nil {
			return fmt.Errorf("layer %d (%s): entry %q: %w", n, l.Digest, hdr.Name, err)
		}
	}
	// The diff ID covers the whole stream, tar padding included.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("layer %d (%s): %w", n, l.Digest, err)
	}
	if l.DiffID != "" {
		if got := "sha256:" + hex.EncodeToString(hash.Sum(nil)); got != l.DiffID {
			return fmt.Errorf("layer %d (%s): content has diff id %s, the config says %s", n, l.Digest, got, l.DiffID)
		}
	}
	return nil
}

func (f *flattener) note(format string, args ...any) {
	f.notes = append(f.notes, Note{Layer: f.layerNo, Path: f.entry, Reason: fmt.Sprintf(format, args...)})
}

// apply applies one tar entry.
func (f *flattener) apply(hdr *tar.Header, body io.Reader) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if strings.ContainsAny(name, "\n\r") {
		f.note("name contains a newline or carriage return, which debugfs cannot address: skipped")
		return nil
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if strings.HasPrefix(base, whiteoutPrefix) {
		return f.whiteout(dir, base)
	}
	if name == "" {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("the root must be a directory")
		}
		e, err := f.entryFrom(hdr, ModeDir)
		if err != nil {
			return err
		}
		f.attrs[""] = e
		return nil
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return f.mkdir(dir, base, hdr)
	case tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse:
		return f.file(dir, base, hdr, body)
	case tar.TypeSymlink:
		return f.symlink(dir, base, hdr)
	case tar.TypeLink:
		return f.hardlink(dir, base, hdr)
	case tar.TypeFifo:
		return f.fifo(dir, base, hdr)
	case tar.TypeChar, tar.TypeBlock:
		// The entry still replaces what a lower layer had there.
		p, err := f.replace(dir, base, hdr)
		if err != nil {
			return err
		}
		f.mark(p)
		kind := "character"
		if hdr.Typeflag == tar.TypeBlock {
			kind = "block"
		}
		f.note("%s device %d:%d skipped: device nodes need root to create", kind, hdr.Devmajor, hdr.Devminor)
		return nil
	case tar.TypeXGlobalHeader:
		return nil
	}
	f.note("tar entry type %q skipped: not supported", hdr.Typeflag)
	return nil
}

// entryFrom builds the manifest entry of a header with file type typ.
func (f *flattener) entryFrom(hdr *tar.Header, typ uint32) (Entry, error) {
	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) > 0xfffffffe || int64(hdr.Gid) > 0xfffffffe {
		return Entry{}, fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	e := Entry{
		Mode:    typ | uint32(hdr.Mode)&0o7777,
		UID:     uint32(hdr.Uid),
		GID:     uint32(hdr.Gid),
		ModTime: hdr.ModTime,
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, xattrPAXPrefix)
		if !ok {
			continue
		}
		if !ext4Xattr(name) {
			f.note("xattr %s skipped: ext4 cannot store it", name)
			continue
		}
		if e.Xattrs == nil {
			e.Xattrs = map[string][]byte{}
		}
		e.Xattrs[name] = []byte(v)
	}
	return e, nil
}

// ext4Xattr reports whether ext4 (through debugfs ea_set) stores the xattr.
func ext4Xattr(name string) bool {
	for _, p := range []string{"user.", "trusted.", "security."} {
		if strings.HasPrefix(name, p) && len(name) > len(p) {
			return true
		}
	}
	return name == "system.posix_acl_access" || name == "system.posix_acl_default"
}

func defaultDir(mtime time.Time) Entry {
	return Entry{Mode: ModeDir | 0o755, ModTime: mtime}
}

// set records the metadata of physical path p and marks it as this layer's.
func (f *flattener) set(p string, e Entry) {
	f.attrs[p] = e
	f.mark(p)
}

// mark records p and its parents as present in the current layer.
func (f *flattener) mark(p string) {
	for {
		if f.layer[p] {
			return
		}
		f.layer[p] = true
		if p == "" {
			return
		}
		p = parentOf(p)
	}
}

// parent resolves the directory dir (following symlinks) and creates the
// missing part of it, returning its physical path.
func (f *flattener) parent(dir string, mtime time.Time) (string, error) {
	comps, exist, err := f.resolve(dir, true)
	if err != nil {
		return "", err
	}
	if exist == len(comps) && !f.isDir(joinPath(comps)) {
		return "", fmt.Errorf("/%s is not a directory: %w", joinPath(comps), errNotDir)
	}
	for i := exist; i < len(comps); i++ {
		p := joinPath(comps[:i+1])
		if err := f.root.Mkdir(p, 0o700); err != nil {
			return "", err
		}
		f.dirs[p] = true
		f.set(p, defaultDir(mtime))
	}
	return joinPath(comps), nil
}

// isDir reports whether physical path p is a directory (not a symlink).
func (f *flattener) isDir(p string) bool {
	if p == "" || f.dirs[p] {
		return true
	}
	fi, err := f.root.Lstat(p)
	if err != nil || !fi.IsDir() {
		return false
	}
	f.dirs[p] = true
	return true
}

// removeExisting deletes whatever is at physical path p (not following a
// symlink there). A missing path is fine.
func (f *flattener) removeExisting(p string) error {
	fi, err := f.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		clear(f.dirs)
	}
	return f.root.RemoveAll(p)
}

// replace makes the parent of a new non-directory entry and clears its
// path, returning the physical path.
func (f *flattener) replace(dir, base string, hdr *tar.Header) (string, error) {
	parent, err := f.parent(dir, hdr.ModTime)
	if err != nil {
		return "", err
	}
	p := child(parent, base)
	return p, f.removeExisting(p)
}

func (f *flattener) mkdir(dir, base string, hdr *tar.Header) error {
	e, err := f.entryFrom(hdr, ModeDir)
	if err != nil {
		return err
	}
	parent, err := f.parent(dir, hdr.ModTime)
	if err != nil {
		return err
	}
	p := child(parent, base)
	fi, err := f.root.Lstat(p)
	switch {
	case err == nil && fi.IsDir():
		// A directory over a directory merges.
	case err == nil || errors.Is(err, fs.ErrNotExist):
		if err := f.removeExisting(p); err != nil {
			return err
		}
		if err := f.root.Mkdir(p, 0o700); err != nil {
			return err
		}
	default:
		return err
	}
	f.dirs[p] = true
	f.set(p, e)
	return nil
}

func (f *flattener) file(dir, base string, hdr *tar.Header, body io.Reader) error {
	e, err := f.entryFrom(hdr, ModeRegular)
	if err != nil {
		return err
	}
	p, err := f.replace(dir, base, hdr)
	if err != nil {
		return err
	}
	out, err := f.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	// tar.Reader.WriteTo seeks over the holes of sparse entries.
	_, err = io.Copy(&ctxFile{ctx: f.ctx, f: out}, body)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	f.set(p, e)
	return nil
}

func (f *flattener) fifo(dir, base string, hdr *tar.Header) error {
	e, err := f.entryFrom(hdr, ModeFIFO)
	if err != nil {
		return err
	}
	p, err := f.replace(dir, base, hdr)
	if err != nil {
		return err
	}
	// An empty placeholder; BuildExt4 makes it a FIFO in the image.
	out, err := f.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	f.set(p, e)
	return nil
}

func (f *flattener) symlink(dir, base string, hdr *tar.Header) error {
	target := hdr.Linkname
	if target == "" {
		return errors.New("symlink with an empty target")
	}
	if strings.IndexByte(target, 0) >= 0 {
		return errors.New("symlink target contains a NUL byte")
	}
	e, err := f.entryFrom(hdr, ModeSymlink)
	if err != nil {
		return err
	}
	if e.Mode&0o777 == 0 {
		e.Mode |= 0o777
	}
	parent, err := f.parent(dir, hdr.ModTime)
	if err != nil {
		return err
	}
	if !path.IsAbs(target) {
		if c := path.Clean(path.Join(parent, target)); c == ".." || strings.HasPrefix(c, "../") {
			return fmt.Errorf("symlink target %q %w (from /%s)", target, errEscape, parent)
		}
	}
	p := child(parent, base)
	if err := f.removeExisting(p); err != nil {
		return err
	}
	if err := f.root.Symlink(target, p); err != nil {
		return err
	}
	f.set(p, e)
	return nil
}

func (f *flattener) hardlink(dir, base string, hdr *tar.Header) error {
	tname, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hardlink target: %w", err)
	}
	if tname == "" {
		return errors.New("hardlink to the root directory")
	}
	tdir, tbase := path.Split(tname)
	tcomps, exist, err := f.resolve(tdir, true)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
	}
	if exist < len(tcomps) {
		return fmt.Errorf("hardlink target %q does not exist", hdr.Linkname)
	}
	tp := child(joinPath(tcomps), tbase)
	fi, err := f.root.Lstat(tp)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("hardlink target %q does not exist", hdr.Linkname)
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("hardlink target %q is a directory", hdr.Linkname)
	}
	parent, err := f.parent(dir, hdr.ModTime)
	if err != nil {
		return err
	}
	p := child(parent, base)
	if p == tp {
		f.mark(p)
		return nil
	}
	if err := f.removeExisting(p); err != nil {
		return err
	}
	// A hardlink shares its target's inode, so its metadata too.
	e := f.attrs[tp]
	if e.Type() == ModeFIFO {
		// FIFOs become separate inodes: BuildExt4 creates each one.
		out, err := f.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
	} else if err := f.root.Link(tp, p); err != nil {
		return err
	}
	f.set(p, e)
	return nil
}

// whiteout applies a ".wh." entry found in directory dir.
func (f *flattener) whiteout(dir, base string) error {
	if base == opaqueMarker {
		parent, err := f.parent(dir, time.Unix(0, 0))
		if err != nil {
			return err
		}
		if _, ok := f.attrs[parent]; !ok {
			f.attrs[parent] = defaultDir(time.Unix(0, 0))
		}
		f.mark(parent)
		return f.prune(parent)
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		f.note("whiteout metadata skipped")
		return nil
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return fmt.Errorf("malformed whiteout %q", base)
	}
	comps, exist, err := f.resolve(dir, true)
	if errors.Is(err, errNotDir) {
		return nil // nothing below a non-directory to delete
	}
	if err != nil {
		return err
	}
	if exist < len(comps) || !f.isDir(joinPath(comps)) {
		return nil
	}
	p := child(joinPath(comps), victim)
	if f.layer[p] {
		return nil // a whiteout never hides its own layer's entries
	}
	return f.removeExisting(p)
}

// prune empties directory p of everything lower layers put there, keeping
// what the current layer created (an opaque directory).
func (f *flattener) prune(p string) error {
	name := p
	if name == "" {
		name = "."
	}
	d, err := f.root.Open(name)
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		c := child(p, n)
		if !f.layer[c] {
			if err := f.removeExisting(c); err != nil {
				return err
			}
			continue
		}
		fi, err := f.root.Lstat(c)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			if err := f.prune(c); err != nil {
				return err
			}
		}
	}
	return nil
}

// finish walks the staged tree and returns the manifest of what is there,
// restoring modification times on the way.
func (f *flattener) finish() (*Manifest, error) {
	m := &Manifest{Notes: f.notes}
	err := filepath.WalkDir(f.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := f.ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(f.dir, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if key == "." {
			key = ""
		}
		e, ok := f.attrs[key]
		if !ok {
			return fmt.Errorf("flatten: no metadata for staged /%s", key)
		}
		e.Path = "/" + key
		m.Entries = append(m.Entries, e)
		if !e.ModTime.IsZero() {
			ts := unix.NsecToTimespec(e.ModTime.UnixNano())
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("set mtime of %s: %w", p, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// ctxFile is an *os.File writer that stops when ctx is done; it keeps
// Seek so tar can skip the holes of sparse files.
type ctxFile struct {
	ctx context.Context
	f   *os.File
}

func (w *ctxFile) Write(b []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	return w.f.Write(b)
}

func (w *ctxFile) Seek(off int64, whence int) (int64, error) { return w.f.Seek(off, whence) }
