package agent_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/agent"
)

type entry struct {
	hdr  tar.Header
	body string
}

func makeTar(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestPutGetRoundTrip(t *testing.T) {
	c := startGuest(t, 0).dial(t)
	ctx := testCtx(t)
	t1 := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	t2 := time.Date(2019, 1, 2, 3, 4, 5, 0, time.UTC)
	in := []entry{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o750, Uid: 1234, Gid: 2345, ModTime: t1}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/a.txt", Mode: 0o640, Uid: 1001, Gid: 1002, ModTime: t2}, body: "hello\n"},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/setuid", Mode: 0o4755, Uid: 0, Gid: 0, ModTime: t2}, body: "#!/bin/sh\n"},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/empty", Mode: 0o600, ModTime: t1}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/sticky/", Mode: 0o1777, ModTime: t2}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "d/link", Linkname: "a.txt", Uid: 7, Gid: 8, ModTime: t1}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "d/sticky/up", Linkname: "../a.txt", ModTime: t1}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "d/hard", Linkname: "d/a.txt"}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "d/fifo", Mode: 0o620, ModTime: t1}},
		// No directory entry for "deep/er": parents are created.
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "deep/er/f", Mode: 0o444, ModTime: t1}, body: strings.Repeat("x", 100000)},
	}
	dest := filepath.Join(t.TempDir(), "dest", "new") // created by the agent
	if err := c.PutTar(ctx, dest, bytes.NewReader(makeTar(t, in))); err != nil {
		t.Fatal(err)
	}

	// On disk.
	for _, e := range in {
		p := filepath.Join(dest, e.hdr.Name)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if e.hdr.Typeflag == tar.TypeLink {
			var target syscall.Stat_t
			syscall.Lstat(filepath.Join(dest, e.hdr.Linkname), &target)
			if st.Ino != target.Ino || st.Nlink != 2 {
				t.Errorf("%s: not a hard link of %s", e.hdr.Name, e.hdr.Linkname)
			}
			continue
		}
		if int(st.Uid) != e.hdr.Uid || int(st.Gid) != e.hdr.Gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", e.hdr.Name, st.Uid, st.Gid, e.hdr.Uid, e.hdr.Gid)
		}
		if mt := time.Unix(st.Mtim.Unix()); !mt.Equal(e.hdr.ModTime) {
			t.Errorf("%s: mtime %v, want %v", e.hdr.Name, mt, e.hdr.ModTime)
		}
		if e.hdr.Typeflag == tar.TypeSymlink {
			if l, _ := os.Readlink(p); l != e.hdr.Linkname {
				t.Errorf("%s: symlink to %q", e.hdr.Name, l)
			}
			continue
		}
		if got := int64(st.Mode & 0o7777); got != e.hdr.Mode {
			t.Errorf("%s: mode %o, want %o", e.hdr.Name, got, e.hdr.Mode)
		}
		if e.hdr.Typeflag == tar.TypeReg {
			if b, _ := os.ReadFile(p); string(b) != e.body {
				t.Errorf("%s: content %q", e.hdr.Name, b)
			}
		}
	}
	if fi, err := os.Lstat(filepath.Join(dest, "d/fifo")); err != nil || fi.Mode()&fs.ModeNamedPipe == 0 {
		t.Errorf("fifo: %v %v", fi, err)
	}

	// And back.
	var out bytes.Buffer
	if err := c.GetTar(ctx, []string{filepath.Join(dest, "d"), filepath.Join(dest, "deep")}, &out); err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	bodies := map[string]string{}
	tr := tar.NewReader(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name], bodies[h.Name] = h, string(b)
	}
	var names []string
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	want := []string{"d/", "d/a.txt", "d/empty", "d/fifo", "d/hard", "d/link", "d/setuid", "d/sticky/", "d/sticky/up", "deep/", "deep/er/", "deep/er/f"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("archive has %q, want %q", names, want)
	}
	for _, e := range in {
		g := got[e.hdr.Name]
		if e.hdr.Typeflag == tar.TypeLink {
			if g.Typeflag != tar.TypeLink || g.Linkname != "d/a.txt" {
				t.Errorf("%s: %c → %q, want a hard link to d/a.txt", e.hdr.Name, g.Typeflag, g.Linkname)
			}
			continue
		}
		if g.Typeflag != e.hdr.Typeflag || g.Uid != e.hdr.Uid || g.Gid != e.hdr.Gid || !g.ModTime.Equal(e.hdr.ModTime) ||
			g.Linkname != e.hdr.Linkname || bodies[e.hdr.Name] != e.body {
			t.Errorf("%s: got %+v", e.hdr.Name, g)
		}
		if e.hdr.Typeflag != tar.TypeSymlink && g.Mode&0o7777 != e.hdr.Mode {
			t.Errorf("%s: mode %o, want %o", e.hdr.Name, g.Mode, e.hdr.Mode)
		}
	}
}

func TestPutRefusesEscapes(t *testing.T) {
	c := startGuest(t, 0).dial(t)
	ok := entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "ok.txt", Mode: 0o644}, body: "fine"}
	reg := func(name string) entry {
		return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, body: "pwned"}
	}
	for _, tc := range []struct {
		name    string
		entries func(base string) []entry
		refused string // the entry the error must name
	}{
		{"dotdot", func(string) []entry { return []entry{ok, reg("../escape.txt")} }, "../escape.txt"},
		{"dotdot inside", func(string) []entry { return []entry{ok, reg("sub/../../escape.txt")} }, "sub/../../escape.txt"},
		{"absolute", func(base string) []entry { return []entry{ok, reg(base + "/escape.txt")} }, "/escape.txt"},
		{"symlink out then through it", func(string) []entry {
			return []entry{ok, {hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "evil", Linkname: "../outside"}}, reg("evil/escape.txt")}
		}, `"evil"`},
		{"absolute symlink", func(base string) []entry {
			return []entry{ok, {hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "evil", Linkname: base + "/outside"}}}
		}, `"evil"`},
		{"hard link out", func(string) []entry {
			return []entry{ok, {hdr: tar.Header{Typeflag: tar.TypeLink, Name: "hl", Linkname: "../outside/secret"}}}
		}, `"hl"`},
		{"hard link absolute", func(base string) []entry {
			return []entry{ok, {hdr: tar.Header{Typeflag: tar.TypeLink, Name: "hl", Linkname: base + "/outside/secret"}}}
		}, `"hl"`},
		// dest/pre is a symlink to ../outside already on disk.
		{"through an existing symlink", func(string) []entry { return []entry{ok, reg("pre/escape.txt")} }, "pre/escape.txt"},
		{"hard link through an existing symlink", func(string) []entry {
			return []entry{ok, {hdr: tar.Header{Typeflag: tar.TypeLink, Name: "hl", Linkname: "pre/secret"}}}
		}, `"hl"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			dest, outside := filepath.Join(base, "dest"), filepath.Join(base, "outside")
			os.Mkdir(dest, 0o755)
			os.Mkdir(outside, 0o755)
			os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600)
			if err := os.Symlink("../outside", filepath.Join(dest, "pre")); err != nil {
				t.Fatal(err)
			}
			before := listTree(t, base)

			err := c.PutTar(testCtx(t), dest, bytes.NewReader(makeTar(t, tc.entries(base))))
			if err == nil || !strings.Contains(err.Error(), tc.refused) || !strings.Contains(err.Error(), "refused") {
				t.Fatalf("err = %v, want a refusal naming %s", err, tc.refused)
			}
			t.Logf("refused: %v", err)
			after := listTree(t, base)
			// Only ok.txt, inside dest, is new.
			want := append(before, "dest/ok.txt")
			sort.Strings(want)
			if strings.Join(after, " ") != strings.Join(want, " ") {
				t.Fatalf("tree changed to %q, want %q", after, want)
			}
			var st syscall.Stat_t
			syscall.Stat(filepath.Join(outside, "secret"), &st)
			if st.Nlink != 1 {
				t.Fatalf("outside/secret gained a link")
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "secret" {
				t.Fatalf("outside/secret changed")
			}
		})
	}
}

func TestPutThroughInnerSymlink(t *testing.T) {
	// A symlink that stays inside dest may be written through.
	c := startGuest(t, 0).dial(t)
	dest := t.TempDir()
	err := c.PutTar(testCtx(t), dest, bytes.NewReader(makeTar(t, []entry{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "real/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "a/b/alias", Linkname: "../../real"}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "a/b/alias/f.txt", Mode: 0o644}, body: "via"},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "./real/g.txt", Mode: 0o644}, body: "dot"},
	})))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"real/f.txt": "via", "real/g.txt": "dot"} {
		if b, err := os.ReadFile(filepath.Join(dest, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v", name, b, err)
		}
	}
}

func listTree(t *testing.T, root string) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			rel, _ := filepath.Rel(root, p)
			names = append(names, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Also anything escaping to the parent (…/escape.txt next to base).
	if _, err := os.Lstat(filepath.Join(filepath.Dir(root), "escape.txt")); err == nil {
		names = append(names, "../escape.txt")
	}
	sort.Strings(names)
	return names
}

type failingReader struct{ after int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.after <= 0 {
		return 0, errors.New("disk on fire")
	}
	n := min(len(p), r.after)
	clear(p[:n])
	r.after -= n
	return n, nil
}

func TestPutGetErrors(t *testing.T) {
	c := startGuest(t, 0).dial(t)
	ctx := testCtx(t)
	dir := t.TempDir()

	if err := c.PutTar(ctx, "relative/dir", bytes.NewReader(nil)); err == nil || !strings.Contains(err.Error(), "not an absolute path") {
		t.Errorf("relative dest: %v", err)
	}
	if err := c.PutTar(ctx, dir, &failingReader{after: 100000}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("failing reader: %v", err)
	}
	if err := c.PutTar(ctx, dir, strings.NewReader("this is not a tar archive, not at all, no"+strings.Repeat(".", 600))); err == nil {
		t.Errorf("garbage archive accepted")
	}
	var out bytes.Buffer
	for _, paths := range [][]string{{"relative"}, {filepath.Join(dir, "missing")}, {"/"}, nil} {
		if err := c.GetTar(ctx, paths, &out); err == nil {
			t.Errorf("GetTar(%q) succeeded", paths)
		}
	}
	// The connection survived all of that.
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestListeningPorts(t *testing.T) {
	c := startGuest(t, 0).dial(t)
	tcp, err := netListen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udp, err := netListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	comm, _ := os.ReadFile("/proc/self/comm")
	type want struct {
		proto, addr string
		port        int
	}
	wants := []want{{"tcp", "127.0.0.1", portOf(tcp.Addr())}, {"udp", "127.0.0.1", portOf(udp.LocalAddr())}}
	if tcp6, err := netListen("tcp6", "[::1]:0"); err == nil {
		defer tcp6.Close()
		wants = append(wants, want{"tcp6", "::1", portOf(tcp6.Addr())})
	} else {
		t.Logf("no IPv6 loopback here: %v", err)
	}

	ports, err := c.ListeningPorts(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	find := func(proto string, port int) *agent.ListeningPort {
		for i := range ports {
			if ports[i].Proto == proto && ports[i].Port == port {
				return &ports[i]
			}
		}
		return nil
	}
	for _, w := range wants {
		p := find(w.proto, w.port)
		if p == nil {
			t.Fatalf("%s port %d not listed in %+v", w.proto, w.port, ports)
		}
		if p.Address != w.addr || p.PID != os.Getpid() || p.Process != strings.TrimSpace(string(comm)) || p.Inode == 0 {
			t.Errorf("%s port %d: %+v", w.proto, w.port, *p)
		}
	}
}
