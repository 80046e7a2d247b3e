package e2e

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/testutil/ocitest"
)

// listenInNS opens a TCP listener on 127.0.0.1 inside the scenario's
// network namespace (the daemon runs there, so a registry on the host's
// loopback would be out of its reach).
func (e *env) listenInNS() net.Listener {
	e.t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		e.t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open("/var/run/netns/" + e.ns)
	if err != nil {
		runtime.UnlockOSThread()
		e.t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		e.t.Fatal(err)
	}
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is in the wrong namespace: leave it locked, so it
		// dies with this goroutine instead of serving others.
		e.t.Fatalf("back to the host namespace: %v", err)
	}
	runtime.UnlockOSThread()
	if lerr != nil {
		e.t.Fatal(lerr)
	}
	return ln
}

// serveInNS serves h on 127.0.0.1 inside the scenario's namespace until
// the test ends.
func (e *env) serveInNS(h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = e.listenInNS()
	srv.Start()
	e.t.Cleanup(srv.Close)
	return srv
}

// appendConfig adds text to the scenario's config.toml (read when the
// daemon starts).
func (e *env) appendConfig(text string) {
	e.t.Helper()
	p := filepath.Join(e.home, "config/banger/config.toml")
	cfg, _ := os.ReadFile(p)
	if err := os.WriteFile(p, append(cfg, text...), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// attrLine is what `stat -c '%n %a %u %g'` prints for p in the base image.
func attrLine(p string, attrs map[string]ocitest.Attr) string {
	a := attrs[p]
	return fmt.Sprintf("%s %o %d %d\n", p, a.Mode&0o7777, a.UID, a.GID)
}

// A multi-layer image — the fixture's root filesystem as the base, then a
// layer adding files and one deleting a base file and a layer-2 file by
// whiteout, making a directory opaque, adding a setuid binary, a root-owned
// 0640 file and a file owned by 1234:5678 — is pulled through the daemon
// from a registry on 127.0.0.1, boots, and the guest sees exactly that.
// Hostile layers are refused naming the entry and leave nothing.
func TestImagePull(t *testing.T) {
	t.Parallel()
	e, reg := pullEnv(t)
	// A catalog server in the namespace; its files are added below.
	var catMu sync.Mutex
	catFiles := map[string][]byte{"/catalog.json": []byte(`{"entries": []}`)}
	cat := e.serveInNS(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		catMu.Lock()
		b, ok := catFiles[r.URL.Path]
		catMu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	e.appendConfig(fmt.Sprintf("catalog_url = %q\n", cat.URL+"/catalog.json"))
	e.importKernel()

	tree := filepath.Join(e.home, "base-tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	attrs := ocitest.ExtractExt4(t, filepath.Join(guestDir, "rootfs.ext4"), tree)
	if a := attrs["/etc/shadow"]; a.Mode&0o777 != 0o640 {
		t.Fatalf("debugfs ls gave /etc/shadow %+v", a)
	}
	base := ocitest.TreeLayer(t, tree, attrs)
	add := ocitest.BytesLayer(t, ocitest.Tar(t,
		ocitest.Dir("opt/", 0o755), ocitest.Dir("opt/bangertest/", 0o755),
		ocitest.File("opt/bangertest/gone.txt", 0o644, "deleted by the next layer"),
		ocitest.Dir("opt/bangertest/opq/", 0o755),
		ocitest.File("opt/bangertest/opq/old.txt", 0o644, "hidden by the opaque marker")))
	change := ocitest.BytesLayer(t, ocitest.Tar(t,
		ocitest.File("etc/.wh.motd", 0, ""),
		ocitest.File("opt/bangertest/.wh.gone.txt", 0, ""),
		ocitest.File("opt/bangertest/opq/.wh..wh..opq", 0, ""),
		ocitest.File("opt/bangertest/opq/new.txt", 0o644, "after the opaque marker"),
		ocitest.Entry{Name: "usr/local/bin/bangertest-suid", Mode: 0o4755, Body: "#!/bin/sh\nid -u\n"},
		ocitest.Entry{Name: "etc/bangertest-secret", Mode: 0o640, Body: "secret\n"},
		ocitest.Entry{Name: "opt/bangertest/owned", Mode: 0o600, UID: 1234, GID: 5678, Body: "owned\n"}))
	ref := reg.Push(t, "bangertest/fixture:layered", base, add, change)
	os.RemoveAll(tree)

	r := e.run("image", "pull", ref, "--name", "bangertest-pulled")
	if r.code != 0 {
		t.Fatalf("image pull: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, stage := range []string{"pull layers", "flatten layers", "inject guest files", "build ext4", "register image"} {
		assertContains(t, "image pull progress", r.stderr, stage+" done")
	}
	var im api.Image
	if err := json.Unmarshal([]byte(e.must("image", "show", "--json", "bangertest-pulled")), &im); err != nil {
		t.Fatal(err)
	}
	if im.Source != "oci" || im.Ref != ref || !im.Managed || !strings.HasPrefix(im.Digest, "sha256:") ||
		im.Dir != filepath.Join(e.stateDir(), "images", "bangertest-pulled") || im.ContentBytes < 100<<20 {
		t.Fatalf("pulled image: %+v", im)
	}
	t.Logf("pulled: image %d MiB, content %d MiB", im.SizeBytes>>20, im.ContentBytes>>20)

	e.must("vm", "create", "--name", "pulled", "--image", "bangertest-pulled")
	check := "for f in /etc/motd /opt/bangertest/gone.txt /opt/bangertest/opq/old.txt; do test -e $f && echo present $f; done; " +
		"cat /opt/bangertest/opq/new.txt; echo; " +
		"stat -c '%n %a %u %g' /usr/local/bin/bangertest-suid /etc/bangertest-secret /opt/bangertest/owned /etc/shadow /usr/bin/passwd /root/.bashrc"
	got := e.ssh("pulled", "sh", "-c", check)
	want := "after the opaque marker\n" +
		"/usr/local/bin/bangertest-suid 4755 0 0\n" +
		"/etc/bangertest-secret 640 0 0\n" +
		"/opt/bangertest/owned 600 1234 5678\n" +
		attrLine("/etc/shadow", attrs) + attrLine("/usr/bin/passwd", attrs) +
		"/root/.bashrc 644 0 0\n" // the image's /root is the work seed of new VMs
	if got != want {
		t.Errorf("in the guest:\n%s\nwant:\n%s", got, want)
	}

	// Delete is refused while the VM uses the image.
	if r := e.run("image", "delete", "bangertest-pulled"); r.code == 0 || !strings.Contains(r.stderr, "pulled") {
		t.Errorf("image delete while used: exit %d %s", r.code, r.stderr)
	}

	// Hostile layers: refused through the daemon, naming the entry; no row
	// and no files remain.
	climb := []ocitest.Entry{ocitest.Symlink("s", "/"), ocitest.Symlink("up", "s/..")} // "up" resolves above the root
	for _, c := range []struct {
		kind   string
		layers [][]ocitest.Entry
		entry  string // the entry the refusal must name
	}{
		{"dotdot", [][]ocitest.Entry{{ocitest.File("../bangertest-evil", 0o644, "x")}}, "../bangertest-evil"},
		{"symlink", [][]ocitest.Entry{{ocitest.Symlink("bangertest-up", "../../outside")}}, "bangertest-up"},
		{"hardlink", [][]ocitest.Entry{{{Name: "bangertest-hard", Type: tar.TypeLink, Mode: 0o644, Link: "../../etc/passwd"}}}, "bangertest-hard"},
		{"through-symlink", [][]ocitest.Entry{climb, {ocitest.File("up/bangertest-outside/x", 0o644, "x")}}, "up/bangertest-outside/x"},
		{"whiteout-through-symlink", [][]ocitest.Entry{climb, {ocitest.File("up/.wh.bangertest-outside", 0, "")}}, "up/.wh.bangertest-outside"},
	} {
		layers := []v1.Layer{ocitest.BytesLayer(t, ocitest.Tar(t, ocitest.Dir("etc", 0o755)))}
		for _, l := range c.layers {
			layers = append(layers, ocitest.BytesLayer(t, ocitest.Tar(t, l...)))
		}
		ref := reg.Push(t, "bangertest/hostile-"+c.kind+":1", layers...)
		r := e.run("image", "pull", ref, "--name", "bangertest-"+c.kind)
		if r.code == 0 || !strings.Contains(r.stderr, c.entry) {
			t.Errorf("hostile %s: exit %d, stderr %q; want a refusal naming %q", c.kind, r.code, r.stderr, c.entry)
		}
	}
	var ims []api.Image
	if err := json.Unmarshal([]byte(e.must("image", "list", "--json")), &ims); err != nil {
		t.Fatal(err)
	}
	if len(ims) != 1 || ims[0].Name != "bangertest-pulled" {
		t.Errorf("images after the hostile pulls: %+v", ims)
	}
	ents, _ := os.ReadDir(filepath.Join(e.stateDir(), "images"))
	if len(ents) != 1 || ents[0].Name() != "bangertest-pulled" {
		t.Errorf("images directory after the hostile pulls: %v", ents)
	}

	// The pulled image as a catalog bundle: pulled by name, verified,
	// and it boots.
	bundleFile := filepath.Join(e.home, "pulled.tar.zst")
	f := strings.Fields(e.must("image", "bundle", "bangertest-pulled", "-o", bundleFile))
	if len(f) != 3 || f[0] != "bangertest-pulled" || len(f[1]) != 64 {
		t.Fatalf("image bundle printed %q; want name, sha256, size", f)
	}
	b, err := os.ReadFile(bundleFile)
	if err != nil || strconv.Itoa(len(b)) != f[2] {
		t.Fatalf("bundle is %d bytes (%v); image bundle said %s", len(b), err, f[2])
	}
	catMu.Lock()
	catFiles["/cat.tar.zst"] = b
	catFiles["/catalog.json"] = []byte(fmt.Sprintf(`{"entries": [{"name": "bangertest-cat", "description": "e2e", "url": %q, "sha256": %q, "size": %s}]}`,
		cat.URL+"/cat.tar.zst", f[1], f[2]))
	catMu.Unlock()
	r = e.run("image", "pull", "bangertest-cat")
	if r.code != 0 {
		t.Fatalf("image pull bangertest-cat: exit %d\n%s", r.code, r.stderr)
	}
	assertContains(t, "catalog pull progress", r.stderr, "download bundle done")
	var ci api.Image
	if err := json.Unmarshal([]byte(e.must("image", "show", "--json", "bangertest-cat")), &ci); err != nil {
		t.Fatal(err)
	}
	if ci.Source != "catalog" || ci.Digest != "sha256:"+f[1] {
		t.Errorf("catalog image: %+v", ci)
	}
	e.must("vm", "delete", "--force", "pulled")
	e.must("vm", "create", "--name", "fromcat", "--image", "bangertest-cat")
	if got := e.ssh("fromcat", "stat", "-c", "%a %u %g", "/opt/bangertest/owned"); got != "600 1234 5678\n" {
		t.Errorf("in the catalog image's guest: %q", got)
	}
	e.must("vm", "delete", "--force", "fromcat")
	e.must("image", "delete", "bangertest-cat")
	e.must("image", "delete", "bangertest-pulled")
	if _, err := os.Stat(im.Dir); !os.IsNotExist(err) {
		t.Errorf("image delete left %s: %v", im.Dir, err)
	}
}

// pullEnv is a scenario whose daemon can pull images from a registry in its
// namespace; they boot the fixture's kernel, which the caller imports with
// e.importKernel() (that starts the daemon: change the config before).
func pullEnv(t *testing.T, vars ...string) (*env, *ocitest.Registry) {
	e := newEnv(t, envOpts{vars: vars, config: fmt.Sprintf("[image]\ndefault_kernel = %q\n", fixtureKernel)})
	return e, ocitest.StartOn(t, e.listenInNS())
}

// TestImagePullCtrlC interrupts `banger image pull` once its ext4 is built
// in staging (the daemon holds the stage): the CLI cancels, and no image
// row or file remains.
func TestImagePullCtrlC(t *testing.T) {
	t.Parallel()
	e, reg := pullEnv(t, "BANGER_TEST_HOLD_STAGE=build ext4")
	e.importKernel()
	ref := reg.Push(t, "bangertest/small:1", ocitest.BytesLayer(t, ocitest.Tar(t, ocitest.Dir("etc", 0o755),
		ocitest.File("etc/os-release", 0o644, "ID=bangertest\n"))))
	cmd := e.cmd("image", "pull", ref, "--name", "bangertest-interrupted")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 1)
	go func() { b, _ := io.ReadAll(stderr); out <- string(b) }()
	imagesDir := filepath.Join(e.stateDir(), "images")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		built, _ := filepath.Glob(filepath.Join(imagesDir, ".staging-*", "rootfs.ext4"))
		if len(built) == 1 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no staged rootfs.ext4 after 2 minutes:\n%s", <-out)
		}
		time.Sleep(50 * time.Millisecond) // polling the daemon's staging directory
	}
	syscall.Kill(cliPID(t, cmd.Process.Pid), syscall.SIGINT)
	text := <-out
	err = cmd.Wait()
	var ee *exec.ExitError
	if !(errorAs(err, &ee) && ee.ExitCode() == 130) {
		t.Fatalf("CLI after Ctrl-C: %v (want exit 130)\n%s", err, text)
	}
	assertContains(t, "CLI output", text, "nothing was left behind")
	if out := e.must("image", "list", "--json"); strings.TrimSpace(out) != "[]" && strings.TrimSpace(out) != "null" {
		t.Errorf("Ctrl-C left images: %s", out)
	}
	if ents, _ := os.ReadDir(imagesDir); len(ents) != 0 {
		t.Errorf("Ctrl-C left files in %s: %v", imagesDir, ents)
	}
}
