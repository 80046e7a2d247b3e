package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// localImage writes tars as uncompressed layer blobs (no registry).
func localImage(t *testing.T, layers ...[]ent) *Image {
	t.Helper()
	dir := t.TempDir()
	img := &Image{}
	for i, l := range layers {
		p := filepath.Join(dir, "layer"+string(rune('0'+i)))
		if err := os.WriteFile(p, tarBytes(t, l...), 0o644); err != nil {
			t.Fatal(err)
		}
		img.Layers = append(img.Layers, Layer{Path: p})
	}
	return img
}

func flattenTree(t *testing.T, layers ...[]ent) (string, *Manifest) {
	t.Helper()
	staging := filepath.Join(t.TempDir(), "staging")
	m, err := Flatten(context.Background(), localImage(t, layers...), staging)
	if err != nil {
		t.Fatal(err)
	}
	return staging, m
}

func entryOf(m *Manifest, p string) *Entry {
	for i := range m.Entries {
		if m.Entries[i].Path == p {
			return &m.Entries[i]
		}
	}
	return nil
}

func readDir(t *testing.T, p string) []string {
	t.Helper()
	des, err := os.ReadDir(p)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}
	return out
}

func TestOpaqueMarkerOrderDoesNotMatter(t *testing.T) {
	lower := []ent{dir("d/", 0o755), file("d/old", 0o644, "o"), dir("d/sub/", 0o755), file("d/sub/old", 0o644, "o")}
	for name, upper := range map[string][]ent{
		"marker first": {dir("d/", 0o700), file("d/.wh..wh..opq", 0, ""), dir("d/sub/", 0o755), file("d/sub/new", 0o644, "n"), file("d/new", 0o644, "n")},
		"marker last":  {dir("d/", 0o700), dir("d/sub/", 0o755), file("d/sub/new", 0o644, "n"), file("d/new", 0o644, "n"), file("d/.wh..wh..opq", 0, "")},
	} {
		t.Run(name, func(t *testing.T) {
			staging, m := flattenTree(t, lower, upper)
			if got := readDir(t, filepath.Join(staging, "d")); !slices.Equal(got, []string{"new", "sub"}) {
				t.Errorf("d holds %v", got)
			}
			if got := readDir(t, filepath.Join(staging, "d/sub")); !slices.Equal(got, []string{"new"}) {
				t.Errorf("d/sub holds %v", got)
			}
			if e := entryOf(m, "/d"); e == nil || e.Mode != ModeDir|0o700 {
				t.Errorf("/d entry %+v", e)
			}
			if entryOf(m, "/d/old") != nil || entryOf(m, "/d/sub/old") != nil {
				t.Error("manifest lists removed paths")
			}
		})
	}
}

func TestWhiteoutRules(t *testing.T) {
	staging, _ := flattenTree(t,
		[]ent{file("a", 0o644, "1"), dir("d/", 0o755), file("d/x", 0o644, "x"), file("keep", 0o644, "k")},
		[]ent{
			file("b", 0o644, "same layer"), file(".wh.b", 0, ""), // never hides its own layer
			file(".wh.a", 0, ""),
			file(".wh.d", 0, ""),       // a whole directory
			file(".wh.missing", 0, ""), // nothing to delete
			file("keep/.wh.x", 0, ""),  // below a non-directory: nothing
			file(".wh..wh.plnk", 0, ""),
		})
	if got := readDir(t, staging); !slices.Equal(got, []string{"b", "keep"}) {
		t.Errorf("root holds %v", got)
	}
}

func TestReplacements(t *testing.T) {
	staging, m := flattenTree(t,
		[]ent{
			dir("dir2file/", 0o755), file("dir2file/x", 0o644, "x"),
			file("file2dir", 0o644, "f"),
			dir("real/", 0o755), symlink("link2dir", "real"),
			file("hl-a", 0o644, "shared"), hardlink("hl-b", "hl-a"),
		},
		[]ent{
			file("dir2file", 0o600, "now a file"),
			dir("file2dir/", 0o755), file("file2dir/y", 0o644, "y"),
			dir("link2dir/", 0o755), // a directory entry replaces a symlink, not its target
			file("link2dir/z", 0o644, "z"),
			file("hl-a", 0o644, "new a"), // unlinked first: hl-b keeps the old content
		})
	for p, want := range map[string]string{"dir2file": "now a file", "file2dir/y": "y", "link2dir/z": "z", "hl-a": "new a", "hl-b": "shared"} {
		if b, err := os.ReadFile(filepath.Join(staging, p)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", p, b, err, want)
		}
	}
	if fi, err := os.Lstat(filepath.Join(staging, "link2dir")); err != nil || !fi.IsDir() {
		t.Errorf("link2dir: %v %v", fi, err)
	}
	if got := readDir(t, filepath.Join(staging, "real")); len(got) != 0 {
		t.Errorf("symlink target written to: %v", got)
	}
	if e := entryOf(m, "/dir2file"); e == nil || e.Mode != ModeRegular|0o600 {
		t.Errorf("/dir2file entry %+v", e)
	}
}

func TestNotesAndStagingRules(t *testing.T) {
	staging, m := flattenTree(t, []ent{
		file("new\nline", 0o644, "x"),
		{name: "f", typ: tar.TypeReg, mode: 0o644, body: "x", xattrs: map[string]string{"user.ok": "1", "foo.bar": "2"}},
		{name: "blk", typ: tar.TypeBlock, mode: 0o600, major: 8},
		{name: "p", typ: tar.TypeFifo, mode: 0o644},
		hardlink("p2", "p"),
	})
	var reasons []string
	for _, n := range m.Notes {
		reasons = append(reasons, n.String())
	}
	all := strings.Join(reasons, "\n")
	for _, want := range []string{"new\nline: name contains a newline", "f: xattr foo.bar skipped", "blk: block device 8:0 skipped"} {
		if !strings.Contains(all, want) {
			t.Errorf("notes lack %q:\n%s", want, all)
		}
	}
	if e := entryOf(m, "/f"); e == nil || string(e.Xattrs["user.ok"]) != "1" || len(e.Xattrs) != 1 {
		t.Errorf("/f xattrs %+v", e)
	}
	for _, p := range []string{"/p", "/p2"} {
		if e := entryOf(m, p); e == nil || e.Type() != ModeFIFO {
			t.Errorf("%s: %+v", p, e)
		}
	}
	// Staged files are plain and private, whatever the image says.
	fi, _ := os.Stat(staging)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("staging mode %v", fi.Mode())
	}
	fi, _ = os.Stat(filepath.Join(staging, "p"))
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("fifo placeholder %v", fi.Mode())
	}

	// A non-empty staging directory is refused and left alone.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x"), nil, 0o644)
	if _, err := Flatten(context.Background(), localImage(t, []ent{file("a", 0o644, "")}), dir); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("non-empty staging: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err != nil {
		t.Error(err)
	}
	// An existing empty one is used, and emptied again on failure.
	empty := t.TempDir()
	_, err := Flatten(context.Background(), localImage(t, []ent{file("a", 0o644, ""), file("../b", 0o644, "")}), empty)
	if err == nil {
		t.Fatal("escape accepted")
	}
	if got := readDir(t, empty); len(got) != 0 {
		t.Errorf("left in staging: %v", got)
	}
}

func TestFlattenCompressions(t *testing.T) {
	data := tarBytes(t, file("hello", 0o644, "zstd"))
	var buf bytes.Buffer
	zw, _ := zstd.NewWriter(&buf)
	zw.Write(data)
	zw.Close()
	p := filepath.Join(t.TempDir(), "blob")
	os.WriteFile(p, buf.Bytes(), 0o644)
	staging := filepath.Join(t.TempDir(), "s")
	if _, err := Flatten(context.Background(), &Image{Layers: []Layer{{Path: p}}}, staging); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(staging, "hello")); string(b) != "zstd" {
		t.Errorf("got %q", b)
	}
}

func TestFlattenCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	staging := filepath.Join(t.TempDir(), "s")
	_, err := Flatten(ctx, localImage(t, []ent{file("a", 0o644, "")}), staging)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v", err)
	}
	if _, err := os.Stat(staging); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging left: %v", err)
	}
}
