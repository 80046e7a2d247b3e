package image

import (
	"context"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"
)

//go:embed catalog/*.json
var catalogFS embed.FS

// Catalog kinds: which embedded list Load reads.
const (
	CatalogImages  = "images"
	CatalogKernels = "kernels"
)

// CatalogEntry is one bundle a catalog offers.
type CatalogEntry struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// URL of the .tar.zst bundle (http or https).
	URL string `json:"url"`
	// SHA256 of the bundle file, hex; Size its length in bytes. Both are
	// checked before anything in the bundle is used.
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Catalog is a list of bundles.
type Catalog struct {
	Comment string         `json:"comment,omitempty"`
	Entries []CatalogEntry `json:"entries"`
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Validate checks every entry, naming the first bad one.
func (c Catalog) Validate() error {
	seen := map[string]bool{}
	for i, e := range c.Entries {
		switch {
		case e.Name == "" || strings.ContainsAny(e.Name, "/:@ "):
			return fmt.Errorf("catalog entry %d: name %q: want a plain name (no '/', ':', '@' or space)", i+1, e.Name)
		case seen[e.Name]:
			return fmt.Errorf("catalog entry %q is listed twice", e.Name)
		case !strings.HasPrefix(e.URL, "http://") && !strings.HasPrefix(e.URL, "https://"):
			return fmt.Errorf("catalog entry %q: url %q: want http:// or https://", e.Name, e.URL)
		case !sha256RE.MatchString(e.SHA256):
			return fmt.Errorf("catalog entry %q: sha256 %q: want 64 lowercase hex digits", e.Name, e.SHA256)
		case e.Size <= 0:
			return fmt.Errorf("catalog entry %q: size %d: want the bundle's length in bytes", e.Name, e.Size)
		}
		seen[e.Name] = true
	}
	return nil
}

// Lookup returns the entry called name.
func (c Catalog) Lookup(name string) (CatalogEntry, bool) {
	for _, e := range c.Entries {
		if e.Name == name {
			return e, true
		}
	}
	return CatalogEntry{}, false
}

// Embedded returns the catalog of kind compiled into banger.
func Embedded(kind string) (Catalog, error) {
	b, err := catalogFS.ReadFile("catalog/" + kind + ".json")
	if err != nil {
		return Catalog{}, fmt.Errorf("no embedded %s catalog", kind)
	}
	return parseCatalog(b, "embedded "+kind+" catalog")
}

// Fetch downloads a catalog from url (http or https).
func Fetch(ctx context.Context, client *http.Client, url string) (Catalog, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Catalog{}, fmt.Errorf("catalog %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return Catalog{}, fmt.Errorf("catalog %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Catalog{}, fmt.Errorf("catalog %s: HTTP %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return Catalog{}, fmt.Errorf("catalog %s: %w", url, err)
	}
	return parseCatalog(b, "catalog "+url)
}

func parseCatalog(b []byte, what string) (Catalog, error) {
	var c Catalog
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("%s: %w", what, err)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s: %w", what, err)
	}
	return c, nil
}

// hexSum formats a digest.
func hexSum(b []byte) string { return hex.EncodeToString(b) }
