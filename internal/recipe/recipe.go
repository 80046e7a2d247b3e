package recipe

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"banger/internal/guestfiles"
)

// buildVersion is part of every recipe hash: bump it when Build's own steps
// change what an image contains, so cached builds are redone.
const buildVersion = "1"

//go:embed all:debian-bookworm
var recipes embed.FS

// Recipe is a default image described as data: a Debian suite, the
// packages installed on top of debootstrap's minbase variant, files laid
// over the tree, /root dotfiles (the work seed) and systemd units to
// enable, disable or mask.
type Recipe struct {
	Name        string   `toml:"name"`
	Description string   `toml:"description"`
	Suite       string   `toml:"suite"`
	Components  []string `toml:"components"`
	Packages    []string `toml:"packages"`
	Mask        []string `toml:"mask"`
	Enable      []string `toml:"enable"`
	Disable     []string `toml:"disable"`
	// DisableGenerators names systemd generators linked to /dev/null.
	DisableGenerators []string `toml:"disable_generators"`

	// Hash identifies everything the build reads: the recipe directory,
	// banger's guest files and buildVersion (sha256, hex).
	Hash string `toml:"-"`
	// Files are laid over the tree: banger's guest files, then the
	// recipe's overlay/ (paths relative to the guest's /).
	Files []fs.FS `toml:"-"`
	// Root holds the /root dotfiles (the recipe's root/), which become the
	// image's work seed.
	Root fs.FS `toml:"-"`
}

// Names lists the recipes built into banger.
func Names() []string {
	ents, _ := fs.ReadDir(recipes, ".")
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

// Get returns the named built-in recipe, checked.
func Get(name string) (*Recipe, error) {
	dir, err := fs.Sub(recipes, name)
	if err != nil || !fs.ValidPath(name) || strings.Contains(name, "/") {
		return nil, fmt.Errorf("recipe %q: invalid name", name)
	}
	b, err := fs.ReadFile(dir, "recipe.toml")
	if err != nil {
		return nil, fmt.Errorf("no recipe named %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	return parse(name, b, dir)
}

// unitRE matches systemd unit and generator names (no paths, no options).
var unitRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9@._:-]*$`)

// pkgRE is Debian's package name syntax (policy 5.6.1).
var pkgRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)

func parse(name string, b []byte, dir fs.FS) (*Recipe, error) {
	var r Recipe
	md, err := toml.Decode(string(b), &r)
	if err != nil {
		return nil, fmt.Errorf("recipe %s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("recipe %s: unknown keys %v", name, und)
	}
	if r.Name != name {
		return nil, fmt.Errorf("recipe %s: recipe.toml says name = %q", name, r.Name)
	}
	if !unitRE.MatchString(r.Suite) || len(r.Components) == 0 || len(r.Packages) == 0 {
		return nil, fmt.Errorf("recipe %s: suite, components and packages are required", name)
	}
	for _, list := range [][]string{r.Components, r.Packages} {
		for _, p := range list {
			if !pkgRE.MatchString(p) {
				return nil, fmt.Errorf("recipe %s: %q is not a Debian package or component name", name, p)
			}
		}
	}
	for _, list := range [][]string{r.Mask, r.Enable, r.Disable, r.DisableGenerators} {
		for _, u := range list {
			if !unitRE.MatchString(u) {
				return nil, fmt.Errorf("recipe %s: %q is not a systemd unit name", name, u)
			}
		}
	}
	overlay, err := fs.Sub(dir, "overlay")
	if err != nil {
		return nil, err
	}
	if r.Root, err = fs.Sub(dir, "root"); err != nil {
		return nil, err
	}
	r.Files = []fs.FS{guestfiles.FS(), overlay}
	if r.Hash, err = hashInputs(dir, guestfiles.FS()); err != nil {
		return nil, fmt.Errorf("recipe %s: %w", name, err)
	}
	return &r, nil
}

// hashInputs hashes buildVersion and every file of the given trees (path
// and content), in a fixed order.
func hashInputs(trees ...fs.FS) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "banger recipe build %s\n", buildVersion)
	for i, t := range trees {
		var paths []string
		err := fs.WalkDir(t, ".", func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				paths = append(paths, p)
			}
			return err
		})
		if err != nil {
			return "", err
		}
		sort.Strings(paths)
		for _, p := range paths {
			f, err := t.Open(p)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(h, "%d\x00%s\x00", i, p)
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return "", err
			}
			h.Write([]byte{0})
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
