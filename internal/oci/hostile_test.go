package oci

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hostileSetup makes base/{outside/keep, etc/passwd, a/} and returns base,
// the staging and output paths under base/a, and a snapshot of base.
// staging/../../outside is base/outside.
func hostileSetup(t *testing.T) (base, staging, out string) {
	base = t.TempDir()
	for p, body := range map[string]string{"outside/keep": "sentinel", "etc/passwd": "host passwd"} {
		if err := os.MkdirAll(filepath.Join(base, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(base, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(base, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	return base, filepath.Join(base, "a", "staging"), filepath.Join(base, "a", "rootfs.ext4")
}

func TestHostileLayersAreRefused(t *testing.T) {
	reg := startRegistry(t)
	cases := []struct {
		name   string
		layers [][]ent
		entry  string // the entry the error must name
		escape bool   // the error must match errEscape
		want   string // and contain this
	}{
		{name: "dotdot", layers: [][]ent{{file("ok", 0o644, "x"), file("../evil", 0o644, "x")}}, entry: "../evil", escape: true},
		{name: "dotdot inside", layers: [][]ent{{file("a/../../evil", 0o644, "x")}}, entry: "a/../../evil", escape: true},
		{name: "dotdot dir", layers: [][]ent{{dir("../../outside/", 0o755)}}, entry: "../../outside/", escape: true},
		{name: "symlink out then a file through it", layers: [][]ent{{symlink("link", "../../outside"), file("link/x", 0o644, "x")}},
			entry: "link", escape: true, want: "symlink target"},
		{name: "symlink out in a subdirectory", layers: [][]ent{{dir("d/", 0o755), symlink("d/link", "../../x")}},
			entry: "d/link", escape: true},
		{name: "symlink out, file in the next layer", layers: [][]ent{{symlink("link", "../../outside")}, {file("link/x", 0o644, "x")}},
			entry: "link", escape: true},
		{name: "write through a symlink chain that climbs", layers: [][]ent{{symlink("s", "/"), symlink("up", "s/..")}, {file("up/outside/x", 0o644, "x")}},
			entry: "up/outside/x", escape: true},
		{name: "hardlink dotdot", layers: [][]ent{{hardlink("pw", "../../etc/passwd")}}, entry: "pw", escape: true, want: "hardlink target"},
		{name: "hardlink absolute to a missing file", layers: [][]ent{{hardlink("pw", "/etc/passwd")}}, entry: "pw", want: "does not exist"},
		{name: "hardlink through a climbing symlink", layers: [][]ent{{symlink("s", "/"), symlink("up", "s/.."), hardlink("pw", "up/etc/passwd")}},
			entry: "pw", escape: true},
		{name: "hardlink to a directory", layers: [][]ent{{dir("d/", 0o755), hardlink("pw", "d")}}, entry: "pw", want: "is a directory"},
		{name: "whiteout dotdot", layers: [][]ent{{file("../.wh.outside", 0, "")}}, entry: "../.wh.outside", escape: true},
		{name: "whiteout through a climbing symlink", layers: [][]ent{{symlink("s", "/"), symlink("up", "s/..")}, {file("up/.wh.outside", 0, "")}},
			entry: "up/.wh.outside", escape: true},
		{name: "opaque through a climbing symlink", layers: [][]ent{{symlink("s", "/"), symlink("up", "s/..")}, {file("up/outside/.wh..wh..opq", 0, "")}},
			entry: "up/outside/.wh..wh..opq", escape: true},
		{name: "symlink loop", layers: [][]ent{{symlink("l1", "l2"), symlink("l2", "l1"), file("l1/x", 0o644, "x")}},
			entry: "l1/x", want: "too many levels"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base, staging, out := hostileSetup(t)
			before := snapshot(t, base, "")
			var tars [][]byte
			for _, l := range c.layers {
				tars = append(tars, tarBytes(t, l...))
			}
			ref := pushLayers(t, reg, fmt.Sprintf("hostile/%d:v1", i), tars...)
			cache := t.TempDir()
			img, err := Pull(context.Background(), ref, PullOptions{CacheDir: cache})
			if err != nil {
				t.Fatal(err)
			}
			m, err := Flatten(context.Background(), img, staging)
			if err == nil {
				err = BuildExt4(context.Background(), staging, m, out, 0)
				t.Fatalf("flatten accepted the layer (build: %v)", err)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), fmt.Sprintf("entry %q", c.entry)) {
				t.Errorf("error does not name entry %q: %v", c.entry, err)
			}
			if c.escape && !errors.Is(err, errEscape) {
				t.Errorf("error is not an escape: %v", err)
			}
			if c.want != "" && !strings.Contains(err.Error(), c.want) {
				t.Errorf("error lacks %q: %v", c.want, err)
			}
			if _, err := os.Lstat(staging); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("staging left behind: %v", err)
			}
			if _, err := os.Lstat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("output image exists: %v", err)
			}
			if after := snapshot(t, base, ""); !maps.Equal(before, after) {
				t.Errorf("the tree around staging changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// Absolute symlinks and absolute names are legitimate (an image's
// /etc/alternatives is full of them): they resolve inside the image, never
// on the host.
func TestAbsoluteTargetsStayInside(t *testing.T) {
	needE2fsprogs(t)
	reg := startRegistry(t)
	base, staging, out := hostileSetup(t)
	hostOutside := filepath.Join(base, "outside")
	before := snapshot(t, base, "")
	ref := pushLayers(t, reg, "abs/inside:v1",
		tarBytes(t, symlink("link", hostOutside), symlink("root", "/"), symlink("hostpw", "/etc/passwd")),
		tarBytes(t,
			file("link/x", 0o644, "written through an absolute symlink"),
			file("root/etc/passwd", 0o644, "image passwd"),
			hardlink("pwlink", "/hostpw"), // links the symlink itself
			file("/"+hostOutside+"/y", 0o644, "absolute name"),
			file("root/.wh.nothing", 0, ""), // whiteout through an absolute symlink: harmless
		))
	img, err := Pull(context.Background(), ref, PullOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Flatten(context.Background(), img, staging)
	if err != nil {
		t.Fatal(err)
	}
	if err := BuildExt4(context.Background(), staging, m, out, 0); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, base, filepath.Join(base, "a")); !maps.Equal(withoutA(before, base), after) {
		t.Errorf("files outside staging changed:\nbefore %v\nafter  %v", before, after)
	}
	if got := debugfsR(t, out, "cat "+dq(hostOutside+"/x")); !strings.Contains(got, "written through an absolute symlink") {
		t.Errorf("%s/x in the image: %q", hostOutside, got)
	}
	if got := debugfsR(t, out, "cat "+dq(hostOutside+"/y")); !strings.Contains(got, "absolute name") {
		t.Errorf("%s/y in the image: %q", hostOutside, got)
	}
	if got := debugfsR(t, out, "cat /etc/passwd"); !strings.Contains(got, "image passwd") {
		t.Errorf("/etc/passwd in the image: %q", got)
	}
	if in := stat(t, out, "/pwlink"); in == nil || in.Type != "symlink" || in.Target != "/etc/passwd" {
		t.Errorf("/pwlink: %+v", in)
	}
	if b, _ := os.ReadFile(filepath.Join(base, "etc/passwd")); string(b) != "host passwd" {
		t.Errorf("host decoy changed: %q", b)
	}
}

// withoutA drops base/a and below from a snapshot.
func withoutA(s map[string]string, base string) map[string]string {
	out := map[string]string{}
	a := filepath.Join(base, "a")
	for k, v := range s {
		if k != a && !strings.HasPrefix(k, a+"/") {
			out[k] = v
		}
	}
	return out
}
