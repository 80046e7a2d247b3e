package oci

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/disk"
)

func TestBuildExt4Sizes(t *testing.T) {
	needE2fsprogs(t)
	ctx := context.Background()
	staging, m := flattenTree(t, []ent{file("big", 0o644, strings.Repeat("x", 1<<20)), dir("d/", 0o755)})
	dir := t.TempDir()

	// Automatic: content-sized, rounded to 64 MiB.
	auto := filepath.Join(dir, "auto.ext4")
	if err := BuildExt4(ctx, staging, m, auto, 0); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(auto)
	if fi.Size()%(64<<20) != 0 || fi.Size() < minExtra {
		t.Errorf("auto size %d", fi.Size())
	}

	// Given, as a user would type it.
	size, err := disk.ParseSize("512M")
	if err != nil {
		t.Fatal(err)
	}
	given := filepath.Join(dir, "given.ext4")
	if err := BuildExt4(ctx, staging, m, given, size); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(given); fi.Size() != 512<<20 {
		t.Errorf("given size %d", fi.Size())
	}
	if got := debugfsR(t, given, "stats"); !strings.Contains(got, "Block count:              131072") {
		t.Errorf("file system does not use the whole file:\n%.600s", got)
	}

	// Refusals leave nothing behind.
	for name, c := range map[string]struct {
		out  string
		size int64
		m    *Manifest
		want string
	}{
		"too small":   {filepath.Join(dir, "small.ext4"), 1 << 20, m, "too small"},
		"exists":      {auto, 0, m, "already exists"},
		"no manifest": {filepath.Join(dir, "nom.ext4"), 0, nil, "no manifest"},
		"missing entry": {filepath.Join(dir, "mis.ext4"), 0,
			&Manifest{Entries: m.Entries[:len(m.Entries)-1]}, "not in the manifest"},
		"extra entry": {filepath.Join(dir, "extra.ext4"), 0,
			&Manifest{Entries: append(slicesClone(m.Entries), Entry{Path: "/ghost", Mode: ModeRegular | 0o644})}, "not staged"},
		"wrong type": {filepath.Join(dir, "type.ext4"), 0,
			&Manifest{Entries: retype(m.Entries, "/d", ModeRegular|0o644)}, "manifest says"},
	} {
		t.Run(name, func(t *testing.T) {
			err := BuildExt4(ctx, staging, c.m, c.out, c.size)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("left in the output directory: %v", names)
	}
}

func slicesClone(e []Entry) []Entry { return append([]Entry(nil), e...) }

func retype(es []Entry, p string, mode uint32) []Entry {
	out := slicesClone(es)
	for i := range out {
		if out[i].Path == p {
			out[i].Mode = mode
		}
	}
	return out
}

// A failure after mkfs (here: a debugfs that fails) leaves nothing behind.
func TestBuildExt4LateFailureCleansUp(t *testing.T) {
	needE2fsprogs(t)
	staging, m := flattenTree(t, []ent{file("a", 0o644, "x")})
	fake := t.TempDir()
	if err := os.WriteFile(filepath.Join(fake, "debugfs"), []byte("#!/bin/sh\necho boom >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", fake+string(os.PathListSeparator)+os.Getenv("PATH"))
	dir := t.TempDir()
	err := BuildExt4(context.Background(), staging, m, filepath.Join(dir, "x.ext4"), 0)
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("got %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}

func TestBuildExt4RefusesUnknownXattrs(t *testing.T) {
	needE2fsprogs(t)
	staging, m := flattenTree(t, []ent{file("a", 0o644, "x")})
	m.Entries[len(m.Entries)-1].Xattrs = map[string][]byte{"bogus.name": []byte("x")}
	err := BuildExt4(context.Background(), staging, m, filepath.Join(t.TempDir(), "x.ext4"), 0)
	if err == nil || !strings.Contains(err.Error(), "bogus.name") {
		t.Fatalf("got %v", err)
	}
}

// Paths with spaces and quotes survive the debugfs script.
func TestBuildExt4Quoting(t *testing.T) {
	needE2fsprogs(t)
	staging, m := flattenTree(t, []ent{
		owned(file(`we"ird name`, 0o4711, "q"), 7, 8),
		owned(dir(`sp ace/`, 0o700), 9, 9),
		owned(file(`sp ace/"x"`, 0o600, "q"), 9, 9),
	})
	out := filepath.Join(t.TempDir(), "q.ext4")
	if err := BuildExt4(context.Background(), staging, m, out, 0); err != nil {
		t.Fatal(err)
	}
	for p, w := range map[string][3]int{`/we"ird name`: {0o4711, 7, 8}, `/sp ace`: {0o700, 9, 9}, `/sp ace/"x"`: {0o600, 9, 9}} {
		in := stat(t, out, p)
		if in == nil || int(in.Mode) != w[0] || in.UID != w[1] || in.GID != w[2] {
			t.Errorf("%s: %+v", p, in)
		}
	}
}

// The read-back check notices an image that differs from its manifest.
func TestVerifyImage(t *testing.T) {
	needE2fsprogs(t)
	staging, m := flattenTree(t, []ent{dir("d/", 0o755), owned(file("d/f", 0o644, "x"), 3, 4)})
	out := filepath.Join(t.TempDir(), "v.ext4")
	if err := BuildExt4(context.Background(), staging, m, out, 0); err != nil {
		t.Fatal(err)
	}
	ctx, work := context.Background(), t.TempDir()
	if err := verifyImage(ctx, work, out, m); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		edit func(*Manifest)
		want string
	}{
		"owner":   {func(m *Manifest) { m.Entries[len(m.Entries)-1].UID = 5 }, "/d/f is 0100644 3:4 in the image"},
		"mode":    {func(m *Manifest) { m.Entries[0].Mode = ModeDir | 0o700 }, "/ is 040755"},
		"missing": {func(m *Manifest) { m.Entries = append(m.Entries, Entry{Path: "/d/g", Mode: ModeRegular}) }, "/d/g is missing"},
		"extra":   {func(m *Manifest) { m.Entries = m.Entries[:len(m.Entries)-1] }, "/d/f, which is not in the manifest"},
	} {
		t.Run(name, func(t *testing.T) {
			mm := &Manifest{Entries: slicesClone(m.Entries)}
			c.edit(mm)
			if err := verifyImage(ctx, work, out, mm); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want %q", err, c.want)
			}
		})
	}
}
