// Package ocitest serves OCI images from an in-process registry on a
// loopback listener for tests (go-containerregistry's registry, blobs in
// memory) and builds layers from tar entries.
package ocitest

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"strings"
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

// Registry is a running in-process registry.
type Registry struct {
	// Host is "127.0.0.1:PORT", where clients pull from.
	Host string
	// pushHost is where Push uploads: Host, or a host-side listener of the
	// same registry when Host is in another network namespace.
	pushHost string
}

// Start serves a registry on 127.0.0.1 until the test ends.
func Start(t testing.TB) *Registry {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	return &Registry{Host: host, pushHost: host}
}

// StartOn serves one registry on ln (e.g. a 127.0.0.1 listener made inside
// a network namespace: Host) and on the test's own 127.0.0.1 (for Push)
// until the test ends.
func StartOn(t testing.TB, ln net.Listener) *Registry {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	pushSrv := httptest.NewServer(h)
	t.Cleanup(pushSrv.Close)
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return &Registry{Host: strings.TrimPrefix(srv.URL, "http://"), pushHost: strings.TrimPrefix(pushSrv.URL, "http://")}
}

// Entry is one tar entry of a test layer.
type Entry struct {
	Name string
	Type byte // tar.Type*; 0 means a regular file
	Mode int64
	UID  int
	GID  int
	Body string
	Link string
}

// File, Dir and Symlink make root-owned entries.
func File(n string, mode int64, body string) Entry { return Entry{Name: n, Mode: mode, Body: body} }
func Dir(n string, mode int64) Entry               { return Entry{Name: n, Type: tar.TypeDir, Mode: mode} }
func Symlink(n, target string) Entry {
	return Entry{Name: n, Type: tar.TypeSymlink, Mode: 0o777, Link: target}
}

// Tar builds a tar stream of entries.
func Tar(t testing.TB, ents ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, e := range ents {
		typ := e.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{Name: e.Name, Typeflag: typ, Mode: e.Mode, Uid: e.UID, Gid: e.GID, Linkname: e.Link,
			ModTime: mtime, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("tar header %s: %v", e.Name, err)
		}
		if _, err := tw.Write([]byte(e.Body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer makes a gzip layer whose tar stream open returns (called again
// for each read, so large layers need not stay in memory as tar).
func Layer(t testing.TB, open func() (io.ReadCloser, error)) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(open)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// BytesLayer makes a gzip layer from tar bytes.
func BytesLayer(t testing.TB, tarData []byte) v1.Layer {
	return Layer(t, func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tarData)), nil })
}

// Push uploads a linux/amd64 image made of layers (base first) as repo
// and returns its reference on Host.
func (r *Registry) Push(t testing.TB, repo string, layers ...v1.Layer) string {
	t.Helper()
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64",
		Config: v1.Config{Cmd: []string{"/sbin/init"}}})
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, layers...); err != nil {
		t.Fatal(err)
	}
	tag, err := name.ParseReference(r.pushHost + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatalf("push %s: %v", tag, err)
	}
	return r.Host + "/" + repo
}
