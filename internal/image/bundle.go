package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Bundle layout: a .tar.zst holding these regular files and nothing else.
const (
	BundleManifestFile = "manifest.json"
	BundleKindImage    = "image"
)

// bundleFiles are the names a bundle may hold, in the order written.
var bundleFiles = []string{BundleManifestFile, RootFSFile, WorkSeedFile}

// BundleManifest is a bundle's manifest.json.
type BundleManifest struct {
	Kind        string `json:"kind"` // BundleKindImage
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// ContentBytes is the file content of the root filesystem.
	ContentBytes int64 `json:"content_bytes,omitempty"`
	// WorkSeed says the bundle has work-seed.tar (applied to new work disks).
	WorkSeed  bool      `json:"work_seed,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// WriteBundle writes a bundle of an image's root filesystem and work seed
// directory (seedDir, "" for none) to out, which must not exist (built next
// to it and linked into place), and returns its sha256 (hex) and size.
func WriteBundle(ctx context.Context, out string, m BundleManifest, rootfs, seedDir string) (sum string, size int64, err error) {
	if _, err := os.Lstat(out); err == nil {
		return "", 0, fmt.Errorf("%s already exists; remove it or pick another -o", out)
	}
	workSeed := ""
	if seedDir != "" {
		if workSeed, err = tarDir(ctx, seedDir, filepath.Dir(out)); err != nil {
			return "", 0, fmt.Errorf("work seed %s: %w", seedDir, err)
		}
		defer os.Remove(workSeed)
	}
	m.Kind, m.WorkSeed = BundleKindImage, workSeed != ""
	return WriteTarZst(out, func(tw *tar.Writer) error {
		if err := AddJSON(tw, BundleManifestFile, m, m.CreatedAt); err != nil {
			return err
		}
		for _, f := range [][2]string{{RootFSFile, rootfs}, {WorkSeedFile, workSeed}} {
			if f[1] == "" {
				continue
			}
			if err := AddFile(ctx, tw, f[0], f[1]); err != nil {
				return err
			}
		}
		return nil
	})
}

// WriteTarZst writes a bundle file: the tar stream fill writes, compressed
// with zstd, to out, which must not exist (built in a temporary file next
// to it, synced and linked into place). It returns the file's sha256 (hex)
// and size.
func WriteTarZst(out string, fill func(tw *tar.Writer) error) (sum string, size int64, err error) {
	if _, err := os.Lstat(out); err == nil {
		return "", 0, fmt.Errorf("%s already exists; remove it or pick another -o", out)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return "", 0, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	zw, err := zstd.NewWriter(cw)
	if err != nil {
		return "", 0, err
	}
	tw := tar.NewWriter(zw)
	if err := fill(tw); err != nil {
		zw.Close()
		return "", 0, err
	}
	if err := tw.Close(); err != nil {
		return "", 0, err
	}
	if err := zw.Close(); err != nil {
		return "", 0, err
	}
	if err := tmp.Sync(); err != nil {
		return "", 0, err
	}
	if err := tmp.Close(); err != nil {
		return "", 0, err
	}
	if err := os.Link(tmp.Name(), out); err != nil { // fails if out appeared meanwhile
		return "", 0, err
	}
	os.Remove(tmp.Name())
	return hexSum(h.Sum(nil)), cw.n, nil
}

// AddJSON writes v, indented, as the regular file name.
func AddJSON(tw *tar.Writer, name string, v any, mtime time.Time) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return err
	}
	_, err = tw.Write(b)
	return err
}

// tarDir writes the directories and regular files of dir to a temporary
// tar file in tmpDir and returns its path.
func tarDir(ctx context.Context, dir, tmpDir string) (_ string, err error) {
	f, err := os.CreateTemp(tmpDir, ".work-seed-*.tar")
	if err != nil {
		return "", err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(f.Name())
		}
	}()
	tw := tar.NewWriter(f)
	if err = AddTree(ctx, tw, "", dir); err == nil {
		err = tw.Close()
	}
	return f.Name(), err
}

// AddTree writes the directories and regular files under dir (not dir
// itself) as entries named prefix/RELPATH (RELPATH alone when prefix is
// ""), owned by root; symlinks and special files are skipped.
func AddTree(ctx context.Context, tw *tar.Writer, prefix, dir string) error {
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." || !(d.IsDir() || d.Type().IsRegular()) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = path.Join(prefix, filepath.ToSlash(rel)), 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		r, err := os.Open(p)
		if err != nil {
			return err
		}
		defer r.Close()
		_, err = io.Copy(tw, r)
		return err
	})
}

// AddFile writes the regular file src as name (mode 0644).
func AddFile(ctx context.Context, tw *tar.Writer, name, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: fi.Size(), ModTime: fi.ModTime(), Format: tar.FormatPAX}); err != nil {
		return err
	}
	_, err = io.Copy(tw, &ctxReader{ctx: ctx, r: f})
	return err
}

// Download fetches a catalog entry's bundle into dst (which must not
// exist), hashing it as it arrives; a size or sha256 different from the
// catalog's is refused and dst removed, so nothing unverified is ever
// opened. progress (may be nil) gets the bytes so far.
func Download(ctx context.Context, client *http.Client, e CatalogEntry, dst string, progress func(done, total int64)) (err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.URL, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("download bundle %s: %w", e.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("download bundle %s from %s: HTTP %s", e.Name, e.URL, resp.Status)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	h := sha256.New()
	var n int64
	buf := make([]byte, 1<<20)
	last := int64(-1)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			n += int64(k)
			if n > e.Size {
				return fmt.Errorf("bundle %s: more than the %d bytes the catalog lists; refused, nothing kept", e.Name, e.Size)
			}
			h.Write(buf[:k])
			if _, err := f.Write(buf[:k]); err != nil {
				return err
			}
			if progress != nil && (n-last >= 1<<20 || n == e.Size) {
				progress(n, e.Size)
				last = n
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("download bundle %s: %w (after %d of %d bytes)", e.Name, rerr, n, e.Size)
		}
	}
	if n != e.Size {
		return fmt.Errorf("bundle %s: download ended after %d of %d bytes (truncated); refused, nothing kept", e.Name, n, e.Size)
	}
	if got := hexSum(h.Sum(nil)); got != e.SHA256 {
		return fmt.Errorf("bundle %s: sha256 %s, but the catalog says %s; refused, nothing kept", e.Name, got, e.SHA256)
	}
	return nil
}

// Unpack extracts a verified bundle into dir: only manifest.json,
// rootfs.ext4 and work-seed.tar, as regular files (rootfs.ext4 written
// sparse); anything else is refused, naming the entry. It returns the
// manifest after checking that rootfs.ext4 is an ext4 file system.
func Unpack(ctx context.Context, bundle, dir string) (BundleManifest, error) {
	var m BundleManifest
	tr, closeBundle, err := OpenTarZst(ctx, bundle)
	if err != nil {
		return m, err
	}
	defer closeBundle()
	allowed := map[string]bool{}
	for _, n := range bundleFiles {
		allowed[n] = true
	}
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return m, fmt.Errorf("bundle: %w", err)
		}
		if !allowed[hdr.Name] || hdr.Typeflag != tar.TypeReg || seen[hdr.Name] {
			return m, fmt.Errorf("bundle: unexpected entry %q (type %c): a bundle holds only %v, once each", hdr.Name, hdr.Typeflag, bundleFiles)
		}
		seen[hdr.Name] = true
		if hdr.Name == BundleManifestFile {
			b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
			if err != nil {
				return m, err
			}
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&m); err != nil {
				return m, fmt.Errorf("bundle: %s: %w", BundleManifestFile, err)
			}
			continue
		}
		if err := writeSparse(filepath.Join(dir, hdr.Name), tr, hdr.Size); err != nil {
			return m, err
		}
	}
	switch {
	case !seen[BundleManifestFile]:
		return m, fmt.Errorf("bundle: no %s", BundleManifestFile)
	case m.Kind != BundleKindImage:
		return m, fmt.Errorf("bundle: kind %q, want %q", m.Kind, BundleKindImage)
	case !seen[RootFSFile]:
		return m, fmt.Errorf("bundle: no %s", RootFSFile)
	case m.WorkSeed != seen[WorkSeedFile]:
		return m, fmt.Errorf("bundle: manifest says work_seed=%v but %s is %v", m.WorkSeed, WorkSeedFile, map[bool]string{true: "present", false: "absent"}[seen[WorkSeedFile]])
	}
	return m, checkExt4(filepath.Join(dir, RootFSFile))
}

// OpenTarZst opens a bundle file for reading its tar stream, which stops
// when ctx is done; close releases it.
func OpenTarZst(ctx context.Context, bundle string) (tr *tar.Reader, close func(), err error) {
	f, err := os.Open(bundle)
	if err != nil {
		return nil, nil, err
	}
	zr, err := zstd.NewReader(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("bundle %s: %w", filepath.Base(bundle), err)
	}
	return tar.NewReader(&ctxReader{ctx: ctx, r: zr}), func() { zr.Close(); f.Close() }, nil
}

// writeSparse writes n bytes of r to a new file p, leaving all-zero blocks
// as holes.
func writeSparse(p string, r io.Reader, n int64) (err error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	buf := make([]byte, 64<<10)
	var off int64
	for off < n {
		k, rerr := io.ReadFull(r, buf[:min(int64(len(buf)), n-off)])
		if k > 0 {
			if !allZero(buf[:k]) {
				if _, err := f.WriteAt(buf[:k], off); err != nil {
					return err
				}
			}
			off += int64(k)
		}
		if rerr != nil && off < n {
			return fmt.Errorf("bundle: %s: %w", filepath.Base(p), rerr)
		}
	}
	return f.Truncate(n)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// checkExt4 looks for the ext4 superblock magic.
func checkExt4(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 2)
	if _, err := f.ReadAt(b, 1080); err != nil || b[0] != 0x53 || b[1] != 0xEF {
		return fmt.Errorf("bundle: %s is not an ext4 file system", filepath.Base(p))
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// ctxReader stops reading when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(b)
}

// SeedDir is the directory an image's work seed is unpacked to.
const SeedDir = "work-seed"

// ExtractSeed unpacks a work-seed tar into dir/work-seed (created) and
// removes the tar. Only directories and regular files are accepted, and
// no name may leave the directory (os.Root refuses it); anything else is
// refused, naming the entry.
func ExtractSeed(ctx context.Context, dir string) error {
	src := filepath.Join(dir, WorkSeedFile)
	dst := filepath.Join(dir, SeedDir)
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(dst)
	if err != nil {
		return err
	}
	defer root.Close()
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(&ctxReader{ctx: ctx, r: f})
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("work seed: %w", err)
		}
		name := filepath.Clean(hdr.Name)
		if name == "." {
			continue
		}
		perm := os.FileMode(hdr.Mode) & 0o7777
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = root.MkdirAll(name, perm|0o700)
		case tar.TypeReg:
			if err = root.MkdirAll(filepath.Dir(name), 0o755); err == nil {
				var w *os.File
				if w, err = root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm); err == nil {
					_, err = io.Copy(w, tr)
					if cerr := w.Close(); err == nil {
						err = cerr
					}
				}
			}
		default:
			err = fmt.Errorf("type %c not allowed (directories and regular files only)", hdr.Typeflag)
		}
		if err != nil {
			return fmt.Errorf("work seed entry %q: %w", hdr.Name, err)
		}
	}
	return os.Remove(src)
}
