package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
)

// DefaultPlatform is the only platform banger boots.
const DefaultPlatform = "linux/amd64"

// progressStep is how many downloaded bytes make a new progress report.
const progressStep = 1 << 20

// PullOptions configures Pull. Only CacheDir is required.
type PullOptions struct {
	// CacheDir holds the blob cache, blobs/sha256/<hex>, shared by every
	// pull: a blob already there is never downloaded again.
	CacheDir string
	// Platform picked from a multi-platform index, "os/arch[/variant]".
	// Default DefaultPlatform.
	Platform string
	// Insecure allows plain HTTP to the registry. Loopback, localhost and
	// RFC 1918 registries get plain HTTP without it (go-containerregistry's
	// rule), which is what tests against 127.0.0.1 use.
	Insecure bool
	// Keychain supplies credentials; default authn.DefaultKeychain
	// (~/.docker/config.json and its credential helpers, else anonymous).
	Keychain authn.Keychain
	// Transport for registry requests; default remote.DefaultTransport.
	Transport http.RoundTripper
	// Progress, if set, is called as layer bytes arrive, about once per MiB
	// per layer (never concurrently).
	Progress func(Progress)
	// Jobs is how many layers download at once; default 3.
	Jobs int
}

// Progress reports one layer's download. The first report for a layer has
// Done 0 (or Done == Total with Cached set), the last has Done == Total.
type Progress struct {
	Index  int    // layer position, 0 = base layer
	Layers int    // number of layers in the image
	Digest string // "sha256:..." of the compressed blob
	Done   int64  // bytes downloaded (or found in the cache) so far
	Total  int64  // blob size from the manifest
	Cached bool   // the blob was already in the cache: nothing downloaded
}

// Image is a pulled image: its metadata and the cached blobs of its layers.
type Image struct {
	// Ref is the reference as given; Name the fully qualified one
	// ("index.docker.io/library/debian:bookworm").
	Ref  string `json:"ref"`
	Name string `json:"name"`
	// Digest is the manifest digest of the platform image; IndexDigest the
	// digest of the index it was chosen from ("" for a single image). Pin
	// a pull with Name@Digest.
	Digest      string `json:"digest"`
	IndexDigest string `json:"index_digest,omitempty"`
	Platform    string `json:"platform"`
	// Config is the image configuration (Env, Entrypoint, Cmd, User, ...).
	Config *v1.ConfigFile `json:"config"`
	// Layers, base layer first.
	Layers []Layer `json:"layers"`
	// Downloaded counts the blob bytes this pull fetched (0 when everything
	// came from the cache).
	Downloaded int64 `json:"downloaded"`
}

// Layer is one layer blob in the cache.
type Layer struct {
	Digest    string `json:"digest"`  // compressed blob, "sha256:..."
	DiffID    string `json:"diff_id"` // uncompressed tar, checked while flattening
	MediaType string `json:"media_type"`
	Size      int64  `json:"size"`
	Path      string `json:"path"` // the cached blob
}

// Size returns the total compressed size of the layers.
func (img *Image) Size() int64 {
	var n int64
	for _, l := range img.Layers {
		n += l.Size
	}
	return n
}

// Pull resolves ref (a tag or digest reference; Docker Hub by default),
// picks the platform image from an index, and makes sure its config and
// layer blobs are in the cache, downloading only the missing ones (several
// at once, each verified against its digest before it enters the cache).
// Manifests are always fetched: tags move.
func Pull(ctx context.Context, ref string, opts PullOptions) (*Image, error) {
	if opts.CacheDir == "" {
		return nil, errors.New("oci pull: no cache directory")
	}
	platform, err := parsePlatform(opts.Platform)
	if err != nil {
		return nil, err
	}
	var nameOpts []name.Option
	if opts.Insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	keychain := opts.Keychain
	if keychain == nil {
		keychain = authn.DefaultKeychain
	}
	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(keychain),
		remote.WithPlatform(platform),
		remote.WithUserAgent("banger"),
	}
	if opts.Transport != nil {
		ropts = append(ropts, remote.WithTransport(opts.Transport))
	}
	c := &cache{dir: filepath.Join(opts.CacheDir, "blobs", "sha256")}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, err
	}

	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", r, err)
	}
	out := &Image{Ref: ref, Name: r.Name(), Platform: platformString(platform)}
	var img v1.Image
	switch {
	case desc.MediaType.IsIndex():
		out.IndexDigest = desc.Digest.String()
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, fmt.Errorf("pull %s: %w", r, err)
		}
		img, err = pickPlatform(idx, platform, r.String())
		if err != nil {
			return nil, err
		}
	case desc.MediaType.IsImage():
		if img, err = desc.Image(); err != nil {
			return nil, fmt.Errorf("pull %s: %w", r, err)
		}
	default:
		return nil, fmt.Errorf("pull %s: %s is not an image or an image index", r, desc.MediaType)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", r, err)
	}
	out.Digest = digest.String()
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("pull %s: manifest: %w", r, err)
	}

	// The config: from the cache or the registry (and then cached).
	var downloaded int64
	cfgPath, err := c.ensure(ctx, m.Config.Digest, m.Config.Size, func() (io.ReadCloser, error) {
		raw, err := img.RawConfigFile()
		if err != nil {
			return nil, err
		}
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, func(n int64) { downloaded += n })
	if err != nil {
		return nil, fmt.Errorf("pull %s: config %s: %w", r, m.Config.Digest, err)
	}
	cf, err := os.Open(cfgPath)
	if err != nil {
		return nil, err
	}
	out.Config, err = v1.ParseConfigFile(cf)
	cf.Close()
	if err != nil {
		return nil, fmt.Errorf("pull %s: config %s: %w", r, m.Config.Digest, err)
	}
	if err := checkPlatform(out.Config, platform); err != nil {
		return nil, fmt.Errorf("pull %s: %w", r, err)
	}
	if len(out.Config.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("pull %s: %d layers but %d diff ids in the config", r, len(m.Layers), len(out.Config.RootFS.DiffIDs))
	}

	// The layers, several at a time; progress reports are serialized.
	var mu sync.Mutex
	report := func(p Progress) {
		if opts.Progress == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		opts.Progress(p)
	}
	out.Layers = make([]Layer, len(m.Layers))
	for i, ld := range m.Layers {
		if !ld.MediaType.IsLayer() {
			return nil, fmt.Errorf("pull %s: layer %d has media type %s, not a filesystem layer", r, i+1, ld.MediaType)
		}
		out.Layers[i] = Layer{
			Digest:    ld.Digest.String(),
			DiffID:    out.Config.RootFS.DiffIDs[i].String(),
			MediaType: string(ld.MediaType),
			Size:      ld.Size,
		}
	}
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = 3
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for i, ld := range m.Layers {
		g.Go(func() error {
			p := Progress{Index: i, Layers: len(m.Layers), Digest: ld.Digest.String(), Total: ld.Size}
			if path, ok := c.has(ld.Digest, ld.Size); ok {
				out.Layers[i].Path = path
				p.Done, p.Cached = ld.Size, true
				report(p)
				return nil
			}
			report(p)
			var reported int64
			path, err := c.ensure(gctx, ld.Digest, ld.Size, func() (io.ReadCloser, error) {
				l, err := img.LayerByDigest(ld.Digest)
				if err != nil {
					return nil, err
				}
				return l.Compressed()
			}, func(n int64) {
				mu.Lock()
				downloaded += n
				mu.Unlock()
				p.Done += n
				if p.Done-reported >= progressStep && p.Done < p.Total {
					reported = p.Done
					report(p)
				}
			})
			if err != nil {
				return fmt.Errorf("pull %s: layer %d (%s): %w", r, i+1, ld.Digest, err)
			}
			out.Layers[i].Path = path
			p.Done = p.Total
			report(p)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out.Downloaded = downloaded
	return out, nil
}

// pickPlatform chooses the platform's image from an index (recursing into
// nested indexes); the error lists what the index offers instead.
func pickPlatform(idx v1.ImageIndex, want v1.Platform, ref string) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	var best *v1.Descriptor
	var offered []string
	for i := range im.Manifests {
		d := &im.Manifests[i]
		if d.Platform == nil {
			continue
		}
		p := *d.Platform
		offered = append(offered, platformString(p))
		if p.OS != want.OS || p.Architecture != want.Architecture {
			continue
		}
		if p.Variant == want.Variant {
			best = d
			break
		}
		if want.Variant == "" && best == nil {
			best = d // e.g. amd64/v2 when plain amd64 is missing
		}
	}
	if best == nil {
		return nil, fmt.Errorf("pull %s: no %s image in the index (it has: %s)", ref, platformString(want), strings.Join(offered, ", "))
	}
	if best.MediaType.IsIndex() {
		child, err := idx.ImageIndex(best.Digest)
		if err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
		return pickPlatform(child, want, ref)
	}
	img, err := idx.Image(best.Digest)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

func parsePlatform(s string) (v1.Platform, error) {
	if s == "" {
		s = DefaultPlatform
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return v1.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant], e.g. %s", s, DefaultPlatform)
	}
	p := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func platformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// checkPlatform refuses a single-platform image built for something else
// (an index was already filtered). Images without os/arch are accepted.
func checkPlatform(cfg *v1.ConfigFile, want v1.Platform) error {
	if (cfg.OS != "" && cfg.OS != want.OS) || (cfg.Architecture != "" && cfg.Architecture != want.Architecture) {
		return fmt.Errorf("image is %s/%s, want %s", cfg.OS, cfg.Architecture, platformString(want))
	}
	return nil
}

// cache is a content-addressed blob directory. Blobs are written to a
// temporary file in the same directory, verified, and renamed into place,
// so a file under its digest name is always complete and correct; several
// pulls (or processes) may share it.
type cache struct{ dir string }

func (c *cache) path(h v1.Hash) (string, error) {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return "", fmt.Errorf("unsupported digest %s", h)
	}
	if _, err := hex.DecodeString(h.Hex); err != nil {
		return "", fmt.Errorf("bad digest %s", h)
	}
	return filepath.Join(c.dir, h.Hex), nil
}

// has reports whether the blob is cached with the expected size.
func (c *cache) has(h v1.Hash, size int64) (string, bool) {
	p, err := c.path(h)
	if err != nil {
		return "", false
	}
	fi, err := os.Stat(p)
	if err != nil || !fi.Mode().IsRegular() || (size > 0 && fi.Size() != size) {
		return "", false
	}
	return p, true
}

// ensure returns the cached blob h, fetching it with open when missing.
// progress (may be nil) is told how many bytes each read added.
func (c *cache) ensure(ctx context.Context, h v1.Hash, size int64, open func() (io.ReadCloser, error), progress func(int64)) (string, error) {
	p, err := c.path(h)
	if err != nil {
		return "", err
	}
	if _, ok := c.has(h, size); ok {
		return p, nil
	}
	rc, err := open()
	if err != nil {
		return "", err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(c.dir, ".tmp-"+h.Hex[:12]+"-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	hash := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, hash), &ctxReader{ctx: ctx, r: rc, progress: progress})
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	if got := hex.EncodeToString(hash.Sum(nil)); got != h.Hex {
		return "", fmt.Errorf("downloaded blob has digest sha256:%s, want %s", got, h)
	}
	if size > 0 && n != size {
		return "", fmt.Errorf("downloaded %d bytes, want %d", n, size)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return "", err
	}
	return p, nil
}

// ctxReader stops a copy when ctx is done and reports bytes read.
type ctxReader struct {
	ctx      context.Context
	r        io.Reader
	progress func(int64)
}

func (r *ctxReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.Read(b)
	if n > 0 && r.progress != nil {
		r.progress(int64(n))
	}
	return n, err
}
