package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// testRegistry is an in-process registry on 127.0.0.1 that records the
// requests it serves.
type testRegistry struct {
	host string
	mu   sync.Mutex
	reqs []string // "GET /v2/..."
}

func startRegistry(t testing.TB) *testRegistry { return startRegistryAuth(t, "", "") }

// startRegistryAuth is startRegistry requiring HTTP basic auth with
// user:pass when user is not empty.
func startRegistryAuth(t testing.TB, user, pass string) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.reqs = append(r.reqs, req.Method+" "+req.URL.Path)
		r.mu.Unlock()
		if u, p, ok := req.BasicAuth(); user != "" && (!ok || u != user || p != pass) {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"credentials required"}]}`, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

// requests returns the requests served so far and forgets them.
func (r *testRegistry) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

// blobRequests filters requests for blobs (layers and configs).
func blobRequests(reqs []string) []string {
	var out []string
	for _, r := range reqs {
		if strings.Contains(r, "/blobs/") {
			out = append(out, r)
		}
	}
	return out
}

// ent is one tar entry of a test layer.
type ent struct {
	name   string
	typ    byte // tar.Type*; 0 means a regular file
	mode   int64
	uid    int
	gid    int
	body   string
	link   string
	xattrs map[string]string
	major  int64
}

func dir(n string, mode int64) ent { return ent{name: n, typ: tar.TypeDir, mode: mode} }
func file(n string, mode int64, b string) ent {
	return ent{name: n, typ: tar.TypeReg, mode: mode, body: b}
}
func symlink(n, target string) ent {
	return ent{name: n, typ: tar.TypeSymlink, mode: 0o777, link: target}
}
func hardlink(n, target string) ent {
	return ent{name: n, typ: tar.TypeLink, mode: 0o644, link: target}
}
func owned(e ent, uid, gid int) ent { e.uid, e.gid = uid, gid; return e }

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func tarBytes(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{
			Name: e.name, Typeflag: typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, ModTime: testTime, Format: tar.FormatPAX,
			Devmajor: e.major,
		}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if len(e.xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layer makes a gzip layer from tar bytes.
func layer(t testing.TB, tarData []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarData)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// image assembles an image for os/arch from layers (base first).
func image(t testing.TB, arch string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		OS: "linux", Architecture: arch,
		Config: v1.Config{Env: []string{"PATH=/usr/bin:/bin"}, Cmd: []string{"/bin/sh"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// push uploads img as host/repo:tag and returns the reference.
func push(t testing.TB, r *testRegistry, repo string, img v1.Image, opts ...remote.Option) string {
	t.Helper()
	ref := r.host + "/" + repo
	tag, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	r.requests()
	return ref
}

// pushLayers is push(image(layers)) for linux/amd64 tars.
func pushLayers(t testing.TB, r *testRegistry, repo string, tars ...[]byte) string {
	t.Helper()
	var ls []v1.Layer
	for _, b := range tars {
		ls = append(ls, layer(t, b))
	}
	return push(t, r, repo, image(t, "amd64", ls...))
}

func needE2fsprogs(t testing.TB) {
	t.Helper()
	for _, n := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := tool(n); err != nil {
			t.Skipf("e2fsprogs missing: %v", err)
		}
	}
}

// inode is what debugfs stat says about a path in an image.
type inode struct {
	Num    int
	Type   string // regular, directory, symlink, FIFO, ...
	Mode   uint32 // permission bits incl. setuid/setgid/sticky
	UID    int
	GID    int
	Links  int
	Size   int64
	Target string // symlink target
	Mtime  string
}

var (
	statInodeRE = regexp.MustCompile(`Inode: (\d+)\s+Type: (\S+)\s+Mode:\s+(\d+)`)
	statUserRE  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	statLinksRE = regexp.MustCompile(`Links: (\d+)`)
	statSizeRE  = regexp.MustCompile(`Size: (\d+)`)
	statFastRE  = regexp.MustCompile(`Fast link dest: "(.*)"`)
	statMtimeRE = regexp.MustCompile(`mtime: 0x[0-9a-f]+(?::[0-9a-f]+)? -- (.*)`)
)

// debugfsR runs one read-only debugfs request and returns stdout+stderr.
func debugfsR(t testing.TB, img, req string) string {
	t.Helper()
	bin, err := tool("debugfs")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-R", req, img)
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", req, err, out)
	}
	return string(out)
}

// stat returns the inode at p in img, or nil when p does not exist.
func stat(t testing.TB, img, p string) *inode {
	t.Helper()
	out := debugfsR(t, img, "stat "+dq(p))
	if strings.Contains(out, "File not found by ext2_lookup") {
		return nil
	}
	m := statInodeRE.FindStringSubmatch(out)
	u := statUserRE.FindStringSubmatch(out)
	if m == nil || u == nil {
		t.Fatalf("debugfs stat %s: unexpected output:\n%s", p, out)
	}
	in := &inode{Type: m[2]}
	in.Num, _ = strconv.Atoi(m[1])
	mode, _ := strconv.ParseUint(m[3], 8, 32)
	in.Mode = uint32(mode)
	in.UID, _ = strconv.Atoi(u[1])
	in.GID, _ = strconv.Atoi(u[2])
	if l := statLinksRE.FindStringSubmatch(out); l != nil {
		in.Links, _ = strconv.Atoi(l[1])
	}
	if s := statSizeRE.FindStringSubmatch(out); s != nil {
		in.Size, _ = strconv.ParseInt(s[1], 10, 64)
	}
	if f := statFastRE.FindStringSubmatch(out); f != nil {
		in.Target = f[1]
	}
	if mt := statMtimeRE.FindStringSubmatch(out); mt != nil {
		in.Mtime = strings.TrimSpace(mt[1])
	}
	return in
}

// ls lists the names in directory p of img (without . and ..).
func ls(t testing.TB, img, p string) []string {
	t.Helper()
	out := debugfsR(t, img, "ls -p "+dq(p))
	var names []string
	for _, line := range strings.Split(out, "\n") {
		// -p lines: /inode/mode/uid/gid/name/size/
		f := strings.Split(line, "/")
		if len(f) < 7 || f[5] == "." || f[5] == ".." {
			continue
		}
		names = append(names, f[5])
	}
	return names
}

// snapshot describes every path under dir (skipping skip) with its type,
// mode, size and content hash, to prove a tree was not touched.
func snapshot(t testing.TB, dir, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("%v %d", fi.Mode(), fi.Size())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h := sha256.Sum256(b)
			desc += " " + hex.EncodeToString(h[:])
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			desc += " -> " + l
		}
		out[p] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// convert runs the whole pipeline the way the daemon will: pull, flatten
// into a staging directory next to out, build out, remove the staging.
func convert(ctx context.Context, ref, cacheDir, out string) (*Image, *Manifest, error) {
	img, err := Pull(ctx, ref, PullOptions{CacheDir: cacheDir})
	if err != nil {
		return nil, nil, err
	}
	staging := out + ".staging"
	defer os.RemoveAll(staging)
	m, err := Flatten(ctx, img, staging)
	if err != nil {
		return img, nil, err
	}
	return img, m, BuildExt4(ctx, staging, m, out, 0)
}

type platformImage struct {
	arch string
	img  v1.Image
}

// mutateIndex makes an index of linux images, in the order given.
func mutateIndex(t testing.TB, imgs ...platformImage) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, pi := range imgs {
		adds = append(adds, mutate.IndexAddendum{Add: pi.img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: pi.arch},
		}})
	}
	return mutate.AppendManifests(empty.Index, adds...)
}

func pushIndex(t testing.TB, r *testRegistry, repo string, idx v1.ImageIndex) string {
	t.Helper()
	ref := r.host + "/" + repo
	tag, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(tag, idx); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
	r.requests()
	return ref
}
