package oci

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// fullImageTars is the multi-layer image of the end-to-end tests.
func fullImageTars(t testing.TB) [][]byte {
	capValue := "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" // cap_net_raw+ep
	base := tarBytes(t,
		dir("./", 0o755),
		dir("etc/", 0o755),
		file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
		file("etc/shadow", 0o640, "root:*:19000:0:99999:7:::\n"),
		dir("usr/", 0o755), dir("usr/bin/", 0o755),
		file("usr/bin/su", 0o4755, "#!/bin/true setuid\n"),
		owned(file("usr/bin/wall", 0o2755, "#!/bin/true setgid\n"), 0, 5),
		ent{name: "usr/bin/ping", typ: tar.TypeReg, mode: 0o755, body: "ping", xattrs: map[string]string{
			"security.capability": capValue, "user.comment": "hello"}},
		owned(dir("home/user/", 0o750), 1000, 1000),
		owned(file("home/user/notes", 0o600, "mine\n"), 1000, 1000),
		dir("tmp/", 0o1777),
		dir("opt/old/", 0o755),
		file("opt/old/a", 0o644, "lower a"),
		dir("opt/old/sub/", 0o755),
		file("opt/old/sub/b", 0o644, "lower b"),
		dir("var/", 0o755),
		file("var/gone", 0o644, "deleted later"),
		file("var/kept", 0o644, "kept"),
		dir("bin/", 0o755),
		file("bin/ls", 0o755, "ls binary"),
		ent{name: "run/ctl", typ: tar.TypeFifo, mode: 0o600},
		ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1},
		file("old-link-victim", 0o644, "replaced by a symlink later"),
	)
	upper := tarBytes(t,
		file("var/.wh.gone", 0, ""),
		dir("opt/old/", 0o755),
		file("opt/old/new", 0o644, "upper new"),
		file("opt/old/.wh..wh..opq", 0, ""), // after an entry of its own layer: that entry stays
		hardlink("usr/bin/ls-link", "bin/ls"),
		file("usr/bin/a", 0o755, "a and b"),
		hardlink("usr/bin/b", "usr/bin/a"),
		symlink("etc/alt", "/usr/bin/su"),
		dir("usr/lib/", 0o755),
		symlink("lib", "usr/lib"),
		symlink("old-link-victim", "etc/passwd"),
	)
	top := tarBytes(t,
		file("lib/libx.so", 0o644, "through the lib symlink"),
		file("/abs/file", 0o644, "absolute name"),
		file("./etc/hostname", 0o644, "box\n"),
		file("bin/ls", 0o755, "new ls"), // bin/ls is unlinked first: ls-link keeps the old content
	)
	return [][]byte{base, upper, top}
}

func TestPullFlattenBuildExt4(t *testing.T) {
	needE2fsprogs(t)
	ctx := context.Background()
	reg := startRegistry(t)
	ref := pushLayers(t, reg, "test/full:v1", fullImageTars(t)...)
	dir := t.TempDir()
	out := filepath.Join(dir, "rootfs.ext4")
	img, m, err := convert(ctx, ref, filepath.Join(dir, "cache"), out)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Layers) != 3 || img.Config.Architecture != "amd64" || !slices.Equal(img.Config.Config.Cmd, []string{"/bin/sh"}) {
		t.Fatalf("pulled image: %+v", img)
	}
	if _, err := os.Stat(out + ".staging"); !os.IsNotExist(err) {
		t.Errorf("staging left behind: %v", err)
	}
	// Nothing but the image is left next to it.
	names, _ := os.ReadDir(dir)
	for _, n := range names {
		if n.Name() != "rootfs.ext4" && n.Name() != "cache" {
			t.Errorf("left behind: %s", n.Name())
		}
	}

	type want struct {
		typ      string
		mode     uint32
		uid, gid int
	}
	for p, w := range map[string]want{
		"/":                {"directory", 0o755, 0, 0},
		"/usr/bin/su":      {"regular", 0o4755, 0, 0},
		"/usr/bin/wall":    {"regular", 0o2755, 0, 5},
		"/etc/shadow":      {"regular", 0o640, 0, 0},
		"/home/user":       {"directory", 0o750, 1000, 1000},
		"/home/user/notes": {"regular", 0o600, 1000, 1000},
		"/tmp":             {"directory", 0o1777, 0, 0},
		"/run":             {"directory", 0o755, 0, 0}, // implicit parent
		"/run/ctl":         {"FIFO", 0o600, 0, 0},
		"/etc/alt":         {"symlink", 0o777, 0, 0},
		"/lib":             {"symlink", 0o777, 0, 0},
		"/usr/lib/libx.so": {"regular", 0o644, 0, 0},
		"/abs/file":        {"regular", 0o644, 0, 0},
		"/etc/hostname":    {"regular", 0o644, 0, 0},
	} {
		in := stat(t, out, p)
		if in == nil {
			t.Errorf("%s: missing from the image", p)
			continue
		}
		if in.Type != w.typ || in.Mode != w.mode || in.UID != w.uid || in.GID != w.gid {
			t.Errorf("%s: %s %04o %d:%d, want %s %04o %d:%d", p, in.Type, in.Mode, in.UID, in.GID, w.typ, w.mode, w.uid, w.gid)
		}
	}
	// Whiteout and opaque directory.
	for _, p := range []string{"/var/gone", "/opt/old/a", "/opt/old/sub", "/dev/null"} {
		if stat(t, out, p) != nil {
			t.Errorf("%s should not be in the image", p)
		}
	}
	if got := ls(t, out, "/opt/old"); !slices.Equal(got, []string{"new"}) {
		t.Errorf("opaque /opt/old holds %v, want [new]", got)
	}
	if stat(t, out, "/var/kept") == nil {
		t.Error("/var/kept was deleted with its sibling")
	}
	// Symlinks keep their targets.
	if got := stat(t, out, "/etc/alt").Target; got != "/usr/bin/su" {
		t.Errorf("/etc/alt -> %q", got)
	}
	if got := stat(t, out, "/old-link-victim"); got == nil || got.Type != "symlink" || got.Target != "etc/passwd" {
		t.Errorf("/old-link-victim: %+v", got)
	}
	// Hardlinks share an inode; replacing bin/ls did not touch its old link.
	a, b := stat(t, out, "/usr/bin/a"), stat(t, out, "/usr/bin/b")
	if a.Num != b.Num || a.Links != 2 {
		t.Errorf("usr/bin/a inode %d links %d, usr/bin/b inode %d", a.Num, a.Links, b.Num)
	}
	if got := debugfsR(t, out, "cat /usr/bin/ls-link"); !strings.Contains(got, "ls binary") {
		t.Errorf("usr/bin/ls-link: %q", got)
	}
	if got := debugfsR(t, out, "cat /bin/ls"); !strings.Contains(got, "new ls") {
		t.Errorf("bin/ls: %q", got)
	}
	if got := debugfsR(t, out, "cat /usr/lib/libx.so"); !strings.Contains(got, "through the lib symlink") {
		t.Errorf("usr/lib/libx.so: %q", got)
	}
	// Xattrs, including one an unprivileged process cannot set.
	if got := debugfsR(t, out, "ea_list /usr/bin/ping"); !strings.Contains(got, "security.capability (20)") || !strings.Contains(got, `user.comment (5) = "hello"`) {
		t.Errorf("xattrs of /usr/bin/ping:\n%s", got)
	}
	// Modification times come from the layers.
	for _, p := range []string{"/", "/etc/shadow", "/usr/bin", "/etc/alt"} {
		if got := stat(t, out, p).Mtime; !strings.Contains(got, "2024") {
			t.Errorf("%s mtime %q, want the layer's (2024)", p, got)
		}
	}
	// The device node was skipped with a note.
	var noted bool
	for _, n := range m.Notes {
		if n.Path == "dev/null" && strings.Contains(n.Reason, "device") {
			noted = true
		}
	}
	if !noted {
		t.Errorf("no note for dev/null: %v", m.Notes)
	}
}

func TestIndexPicksAmd64(t *testing.T) {
	reg := startRegistry(t)
	arm := image(t, "arm64", layer(t, tarBytes(t, file("arch", 0o644, "arm64"))))
	amd := image(t, "amd64", layer(t, tarBytes(t, file("arch", 0o644, "amd64"))))
	idx := mutateIndex(t, platformImage{"arm64", arm}, platformImage{"amd64", amd}) // arm64 first
	ref := pushIndex(t, reg, "test/multi:v1", idx)

	img, err := Pull(context.Background(), ref, PullOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := amd.Digest()
	if img.Digest != want.String() || img.IndexDigest == "" || img.Platform != "linux/amd64" {
		t.Fatalf("picked %s (index %q, %s), want the amd64 image %s", img.Digest, img.IndexDigest, img.Platform, want)
	}
	staging := filepath.Join(t.TempDir(), "s")
	if _, err := Flatten(context.Background(), img, staging); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(staging, "arch")); string(b) != "amd64" {
		t.Errorf("flattened arch file says %q", b)
	}

	// An index without amd64 says what it has.
	only := pushIndex(t, reg, "test/armonly:v1", mutateIndex(t, platformImage{"arm64", arm}))
	_, err = Pull(context.Background(), only, PullOptions{CacheDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "no linux/amd64 image") || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("pull of an arm64-only index: %v", err)
	}
	// So does a single image for another platform.
	armRef := push(t, reg, "test/armsingle:v1", arm)
	_, err = Pull(context.Background(), armRef, PullOptions{CacheDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("pull of a single arm64 image: %v", err)
	}
}

func TestCacheSecondPullDownloadsNothing(t *testing.T) {
	reg := startRegistry(t)
	ref := pushLayers(t, reg, "test/cache:v1",
		tarBytes(t, file("one", 0o644, strings.Repeat("1", 3<<20))),
		tarBytes(t, file("two", 0o644, "2")))
	cache := t.TempDir()

	var reports []Progress
	img, err := Pull(context.Background(), ref, PullOptions{CacheDir: cache, Progress: func(p Progress) { reports = append(reports, p) }})
	if err != nil {
		t.Fatal(err)
	}
	first := blobRequests(reg.requests())
	if len(first) != 3 { // config + 2 layers
		t.Errorf("first pull fetched %d blobs, want 3: %v", len(first), first)
	}
	if img.Downloaded == 0 {
		t.Error("first pull reports nothing downloaded")
	}
	// Every layer reported from 0 to its size, never concurrently (no lock
	// needed above: -race checks that).
	for i, l := range img.Layers {
		var saw0, sawAll bool
		for _, p := range reports {
			if p.Digest == l.Digest && p.Index == i && p.Total == l.Size && p.Layers == 2 && !p.Cached {
				saw0 = saw0 || p.Done == 0
				sawAll = sawAll || p.Done == p.Total
			}
		}
		if !saw0 || !sawAll {
			t.Errorf("layer %d progress: %+v", i, reports)
		}
		blob, err := os.ReadFile(filepath.Join(cache, "blobs", "sha256", strings.TrimPrefix(l.Digest, "sha256:")))
		if err != nil || int64(len(blob)) != l.Size || l.Path == "" {
			t.Errorf("layer %d not cached at blobs/sha256/<hex>: %v", i, err)
		}
	}

	reports = nil
	again, err := Pull(context.Background(), ref, PullOptions{CacheDir: cache, Progress: func(p Progress) { reports = append(reports, p) }})
	if err != nil {
		t.Fatal(err)
	}
	reqs := reg.requests()
	if b := blobRequests(reqs); len(b) != 0 {
		t.Errorf("second pull fetched blobs: %v", b)
	}
	if len(reqs) == 0 {
		t.Error("second pull made no request at all (the tag must be resolved)")
	}
	if again.Downloaded != 0 || again.Digest != img.Digest {
		t.Errorf("second pull: downloaded %d, digest %s (first %s)", again.Downloaded, again.Digest, img.Digest)
	}
	if len(reports) != 2 || !reports[0].Cached || !reports[1].Cached || reports[0].Done != reports[0].Total {
		t.Errorf("second pull progress: %+v", reports)
	}

	// A corrupted cache entry (wrong size) is fetched again.
	victim := img.Layers[1].Path
	if err := os.WriteFile(victim, []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Pull(context.Background(), ref, PullOptions{CacheDir: cache}); err != nil {
		t.Fatal(err)
	}
	if b := blobRequests(reg.requests()); len(b) != 1 {
		t.Errorf("after corrupting one layer, fetched %v", b)
	}
}

func TestPullErrors(t *testing.T) {
	reg := startRegistry(t)
	cases := map[string]struct {
		ref  string
		opts PullOptions
		want string
	}{
		"no cache":       {reg.host + "/x:1", PullOptions{}, "no cache directory"},
		"bad ref":        {"UPPER/Case::", PullOptions{CacheDir: t.TempDir()}, "image reference"},
		"bad platform":   {reg.host + "/x:1", PullOptions{CacheDir: t.TempDir(), Platform: "amd64"}, "os/arch"},
		"missing":        {reg.host + "/missing:1", PullOptions{CacheDir: t.TempDir()}, "NAME_UNKNOWN"},
		"cancelled pull": {reg.host + "/x:1", PullOptions{CacheDir: t.TempDir()}, "context canceled"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if name == "cancelled pull" {
				cancel()
			}
			_, err := Pull(ctx, c.ref, c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error with %q", err, c.want)
			}
		})
	}
}

func TestDiffIDMismatchIsRefused(t *testing.T) {
	reg := startRegistry(t)
	ref := pushLayers(t, reg, "test/diffid:v1", tarBytes(t, file("f", 0o644, "x")))
	img, err := Pull(context.Background(), ref, PullOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	img.Layers[0].DiffID = "sha256:" + strings.Repeat("0", 64)
	staging := filepath.Join(t.TempDir(), "s")
	_, err = Flatten(context.Background(), img, staging)
	if err == nil || !strings.Contains(err.Error(), "diff id") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(staging); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging left after a failed flatten: %v", err)
	}
}

// Credentials come from the Docker config (authn.DefaultKeychain).
func TestPullWithDockerConfigCredentials(t *testing.T) {
	reg := startRegistryAuth(t, "alice", "s3cret")
	img := image(t, "amd64", layer(t, tarBytes(t, file("f", 0o644, "private"))))
	ref := push(t, reg, "private/app:v1", img, remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"}))

	// Anonymous: refused.
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	_, err := Pull(context.Background(), ref, PullOptions{CacheDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Fatalf("anonymous pull: %v", err)
	}
	// With ~/.docker/config.json (here via DOCKER_CONFIG) holding the login.
	cfg := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	if err := os.WriteFile(filepath.Join(cfg, "config.json"), []byte(`{"auths":{"`+reg.host+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", cfg)
	got, err := Pull(context.Background(), ref, PullOptions{CacheDir: t.TempDir(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Layers) != 1 || got.Downloaded == 0 {
		t.Errorf("pulled %+v", got)
	}
}
