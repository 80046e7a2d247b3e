package kernel

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"banger/internal/image"
)

// A kernel bundle is a .tar.zst holding, in this order, manifest.json,
// vmlinuz and modules/RELEASE/... (directories and regular files only).
const (
	BundleKind    = "kernel"
	bundleKernel  = "vmlinuz"
	bundleModules = "modules"
)

// BundleFile is one regular file of a bundle.
type BundleFile struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// BundleManifest is a kernel bundle's manifest.json.
type BundleManifest struct {
	Kind        string `json:"kind"` // BundleKind
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Release is the kernel's `uname -r`: the modules are under modules/RELEASE.
	Release string `json:"release"`
	// Origin is where the bundled kernel came from (the store's source).
	Origin       string `json:"origin,omitempty"`
	KernelBytes  int64  `json:"kernel_bytes"`
	ModulesBytes int64  `json:"modules_bytes"`
	// Files lists every regular file after the manifest, vmlinuz first.
	Files     []BundleFile `json:"files"`
	CreatedAt time.Time    `json:"created_at"`
}

var releaseRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$`)

// WriteBundle writes a bundle of the kernel file kernelFile and its modules
// tree modulesDir (a lib/modules/RELEASE directory; the build/source links
// and other non-regular files are left out) to out, which must not exist,
// and returns its sha256 (hex) and size.
func WriteBundle(ctx context.Context, out string, m BundleManifest, kernelFile, modulesDir string) (sum string, size int64, err error) {
	if !releaseRE.MatchString(m.Release) {
		return "", 0, fmt.Errorf("kernel release %q is not a release name", m.Release)
	}
	m.Kind = BundleKind
	fi, err := os.Stat(kernelFile)
	if err != nil {
		return "", 0, err
	}
	m.KernelBytes = fi.Size()
	m.Files = []BundleFile{{Name: bundleKernel, Size: fi.Size()}}
	prefix := path.Join(bundleModules, m.Release)
	m.ModulesBytes = 0
	// Listed in the order AddTree writes them (lexical, as WalkDir walks).
	err = filepath.WalkDir(modulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(modulesDir, p)
		m.Files = append(m.Files, BundleFile{Name: path.Join(prefix, filepath.ToSlash(rel)), Size: fi.Size()})
		m.ModulesBytes += fi.Size()
		return nil
	})
	if err != nil {
		return "", 0, fmt.Errorf("modules %s: %w", modulesDir, err)
	}
	return image.WriteTarZst(out, func(tw *tar.Writer) error {
		if err := image.AddJSON(tw, image.BundleManifestFile, m, m.CreatedAt); err != nil {
			return err
		}
		if err := image.AddFile(ctx, tw, bundleKernel, kernelFile); err != nil {
			return err
		}
		return image.AddTree(ctx, tw, prefix, modulesDir)
	})
}

// UnpackBundle extracts a verified kernel bundle into dir (created) and
// returns its manifest. The manifest must come first; after it only
// directories and the regular files it lists (with their sizes) are
// accepted, all inside vmlinuz or modules/RELEASE: an absolute name, a
// `..`, a link, a device or any other type is refused, naming the entry.
// Files are written 0644 and directories 0755 whatever the tar says.
func UnpackBundle(ctx context.Context, bundle, dir string) (BundleManifest, error) {
	var m BundleManifest
	tr, closeBundle, err := image.OpenTarZst(ctx, bundle)
	if err != nil {
		return m, err
	}
	defer closeBundle()
	if err := os.Mkdir(dir, 0o755); err != nil {
		return m, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return m, err
	}
	defer root.Close()
	var want map[string]int64
	seen := map[string]bool{}
	for first := true; ; first = false {
		if err := ctx.Err(); err != nil {
			return m, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return m, fmt.Errorf("kernel bundle: %w", err)
		}
		if first {
			if m, want, err = readManifest(tr, hdr); err != nil {
				return m, err
			}
			continue
		}
		if err := unpackEntry(root, tr, hdr, m.Release, want, seen); err != nil {
			return m, fmt.Errorf("kernel bundle entry %q: %w", hdr.Name, err)
		}
	}
	if want == nil {
		return m, fmt.Errorf("kernel bundle: empty (no %s)", image.BundleManifestFile)
	}
	for _, bf := range m.Files {
		if !seen[bf.Name] {
			return m, fmt.Errorf("kernel bundle: %s lists %s, which the bundle lacks", image.BundleManifestFile, bf.Name)
		}
	}
	return m, nil
}

func readManifest(tr *tar.Reader, hdr *tar.Header) (BundleManifest, map[string]int64, error) {
	var m BundleManifest
	if hdr.Name != image.BundleManifestFile || hdr.Typeflag != tar.TypeReg {
		return m, nil, fmt.Errorf("kernel bundle: first entry %q: want %s", hdr.Name, image.BundleManifestFile)
	}
	b, err := io.ReadAll(io.LimitReader(tr, 16<<20))
	if err != nil {
		return m, nil, fmt.Errorf("kernel bundle: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, nil, fmt.Errorf("kernel bundle: %s: %w", image.BundleManifestFile, err)
	}
	switch {
	case m.Kind != BundleKind:
		return m, nil, fmt.Errorf("kernel bundle: kind %q, want %q", m.Kind, BundleKind)
	case !releaseRE.MatchString(m.Release):
		return m, nil, fmt.Errorf("kernel bundle: release %q is not a release name", m.Release)
	case len(m.Files) == 0 || m.Files[0].Name != bundleKernel:
		return m, nil, fmt.Errorf("kernel bundle: %s must list %s first", image.BundleManifestFile, bundleKernel)
	}
	want := map[string]int64{}
	for _, bf := range m.Files {
		if _, dup := want[bf.Name]; dup {
			return m, nil, fmt.Errorf("kernel bundle: %s lists %s twice", image.BundleManifestFile, bf.Name)
		}
		want[bf.Name] = bf.Size
	}
	return m, want, nil
}

// unpackEntry writes one entry after the manifest under root.
func unpackEntry(root *os.Root, tr *tar.Reader, hdr *tar.Header, release string, want map[string]int64, seen map[string]bool) error {
	name := strings.TrimSuffix(hdr.Name, "/")
	modules := path.Join(bundleModules, release)
	switch {
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("absolute name refused")
	case name == "" || path.Clean(name) != name || name == ".." || strings.HasPrefix(name, "../") || strings.Contains(name, "/../"):
		return fmt.Errorf("a name with `..`, `.` or empty parts refused (bundle names stay inside the tree)")
	case name != bundleKernel && name != bundleModules && name != modules && !strings.HasPrefix(name, modules+"/"):
		return fmt.Errorf("outside %s and %s/ refused", bundleKernel, modules)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if name == bundleKernel {
			return fmt.Errorf("%s must be a regular file", bundleKernel)
		}
		return root.MkdirAll(name, 0o755)
	case tar.TypeReg:
		size, ok := want[name]
		switch {
		case !ok:
			return fmt.Errorf("not listed in %s", image.BundleManifestFile)
		case seen[name]:
			return fmt.Errorf("appears twice")
		case size != hdr.Size:
			return fmt.Errorf("%d bytes, but %s lists %d", hdr.Size, image.BundleManifestFile, size)
		}
		seen[name] = true
		if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
			return err
		}
		w, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		_, err = io.CopyN(w, tr, hdr.Size)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		return err
	}
	return fmt.Errorf("%s refused (a kernel bundle holds only regular files and directories)", typeName(hdr.Typeflag))
}

func typeName(t byte) string {
	switch t {
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar, tar.TypeBlock:
		return "device"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("entry type %q", string(t))
}
