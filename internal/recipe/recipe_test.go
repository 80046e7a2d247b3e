package recipe

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"
)

func TestDebianBookworm(t *testing.T) {
	r, err := Get("debian-bookworm")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"systemd", "systemd-sysv", "udev", "openssh-server", "git", "curl", "ca-certificates",
		"make", "gcc", "build-essential", "tmux", "jq", "docker.io", "less", "vim-tiny", "procps", "iproute2",
		"iputils-ping", "sudo", "unzip", "xz-utils", "file", "rsync"} {
		if !slices.Contains(r.Packages, p) {
			t.Errorf("package %s missing from the recipe", p)
		}
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(r.Hash) {
		t.Fatalf("hash %q", r.Hash)
	}
	if again, _ := Get("debian-bookworm"); again.Hash != r.Hash {
		t.Fatal("the recipe hash is not stable")
	}
	for _, f := range []string{".bashrc", ".profile", ".gitconfig"} {
		if _, err := fs.Stat(r.Root, f); err != nil {
			t.Errorf("dotfile %s: %v", f, err)
		}
	}
	// banger's guest files (shared with the test guest) and the overlay.
	var files []string
	for _, f := range r.Files {
		fs.WalkDir(f, ".", func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files = append(files, p)
			}
			return err
		})
	}
	for _, want := range []string{"etc/ssh/sshd_config.d/10-banger.conf", "etc/motd"} {
		if !slices.Contains(files, want) {
			t.Errorf("%s is not laid over the tree (have %v)", want, files)
		}
	}
	if got := Names(); !slices.Contains(got, "debian-bookworm") {
		t.Fatalf("Names() = %v", got)
	}
}

// The Dockerfile next to the recipe installs the same packages and masks
// the same units: it is the supported way to build the image with Docker.
func TestDockerfileMatchesRecipe(t *testing.T) {
	r, err := Get("debian-bookworm")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("debian-bookworm/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := strings.ReplaceAll(string(b), "\\\n", " ")
	words := func(after, until string) []string {
		i := strings.Index(df, after)
		if i < 0 {
			t.Fatalf("Dockerfile has no %q", after)
		}
		rest := df[i+len(after):]
		if j := strings.Index(rest, until); j >= 0 {
			rest = rest[:j]
		}
		w := strings.Fields(rest)
		slices.Sort(w)
		return w
	}
	sorted := func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
	if got, want := words("--no-install-recommends", "&&"), sorted(r.Packages); !slices.Equal(got, want) {
		t.Errorf("Dockerfile packages %v\nrecipe packages %v", got, want)
	}
	if got, want := words("systemctl mask", "&&"), sorted(r.Mask); !slices.Equal(got, want) {
		t.Errorf("Dockerfile masks %v\nrecipe masks %v", got, want)
	}
	if got, want := words("systemctl enable", "&&"), sorted(r.Enable); !slices.Equal(got, want) {
		t.Errorf("Dockerfile enables %v\nrecipe enables %v", got, want)
	}
	if got, want := words("systemctl disable", "&&"), sorted(r.Disable); !slices.Equal(got, want) {
		t.Errorf("Dockerfile disables %v\nrecipe disables %v", got, want)
	}
	if got, want := words("for g in", ";"), sorted(r.DisableGenerators); !slices.Equal(got, want) {
		t.Errorf("Dockerfile generators %v\nrecipe generators %v", got, want)
	}
}

func TestGetRefusesUnknownAndBadNames(t *testing.T) {
	for _, name := range []string{"nope", "../debian-bookworm", "debian-bookworm/overlay", ""} {
		if _, err := Get(name); err == nil {
			t.Errorf("Get(%q) succeeded", name)
		}
	}
	_, err := Get("nope")
	if err == nil || !strings.Contains(err.Error(), "debian-bookworm") {
		t.Fatalf("Get(nope) = %v; want the known recipes named", err)
	}
}

func TestParseRefusesBadRecipes(t *testing.T) {
	dir := fstest.MapFS{"overlay/etc/x": {Data: []byte("x")}, "root/.bashrc": {Data: []byte("")}}
	good := "name = \"x\"\nsuite = \"bookworm\"\ncomponents = [\"main\"]\npackages = [\"git\"]\n"
	if _, err := parse("x", []byte(good), dir); err != nil {
		t.Fatalf("good recipe: %v", err)
	}
	for what, text := range map[string]string{
		"unknown key":       good + "pakages = [\"x\"]\n",
		"wrong name":        strings.Replace(good, `"x"`, `"y"`, 1),
		"option as package": strings.Replace(good, `"git"`, `"--force-yes"`, 1),
		"path as unit":      good + "mask = [\"../../etc/passwd\"]\n",
		"no packages":       strings.Replace(good, `packages = ["git"]`, "", 1),
		"not toml":          "name = ",
	} {
		if _, err := parse("x", []byte(text), dir); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
}

func TestBuildRefusesNonEmptyDirAndBadSize(t *testing.T) {
	if os.Geteuid() != 0 {
		r, _ := Get("debian-bookworm")
		_, err := Build(context.Background(), r, t.TempDir(), Options{}, nil)
		if !errors.Is(err, ErrNotRoot) || !strings.Contains(err.Error(), "Dockerfile") {
			t.Fatalf("Build as non-root = %v", err)
		}
		return
	}
	r, err := Get("debian-bookworm")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "keep"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), r, dir, Options{}, nil); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("Build into a non-empty directory = %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "keep")); err != nil || string(b) != "k" {
		t.Fatal("Build touched a non-empty directory")
	}
	if _, err := Build(context.Background(), r, t.TempDir(), Options{Size: -1}, nil); err == nil {
		t.Fatal("a negative size was accepted")
	}
}

// A build whose archive stops answering is canceled: debootstrap's whole
// process group is killed, and the directory is left empty with nothing
// mounted under it. The "archive" is an HTTP server on 127.0.0.1 that
// never answers.
func TestBuildCancelLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (debootstrap)")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		t.Fatal("debootstrap is not installed (scripts/host-deps.sh installs it)")
	}
	r, err := Get("debian-bookworm")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	asked := make(chan string, 16)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		asked <- req.URL.Path
		<-req.Context().Done()
	})}
	go srv.Serve(ln)
	defer srv.Close()

	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var stages []string
	var mu sync.Mutex
	var progress []string
	done := make(chan error, 1)
	go func() {
		_, err := Build(ctx, r, dir, Options{Mirror: "http://" + ln.Addr().String() + "/debian", Proxy: "http://" + ln.Addr().String(),
			Progress: func(d string) { mu.Lock(); progress = append(progress, d); mu.Unlock() }},
			func(name string, fn func() error) error { stages = append(stages, name); return fn() })
		done <- err
	}()
	select {
	case p := <-asked:
		t.Logf("debootstrap asked for %s; canceling", p)
	case err := <-done:
		t.Fatalf("Build returned before asking the archive: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("debootstrap never asked the archive")
	}
	cancel()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Build did not return after cancel")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Build after cancel = %v; want context.Canceled", err)
	}
	if !slices.Equal(stages, []string{StageDebootstrap}) {
		t.Fatalf("stages run: %v", stages)
	}
	mu.Lock()
	if !slices.Contains(progress, "Retrieving InRelease") {
		t.Errorf("debootstrap progress reported: %q", progress)
	}
	mu.Unlock()
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("%s holds %v after a canceled build", dir, ents)
	}
	if mps, err := mountsUnder(dir); err != nil || len(mps) != 0 {
		t.Fatalf("mounts under %s: %v %v", dir, mps, err)
	}
	out, _ := exec.Command("pgrep", "-f", dir).Output()
	if len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("processes still running on %s: %s", dir, out)
	}
}

func TestInfoLines(t *testing.T) {
	var got []string
	w := &infoLines{report: func(d string) { got = append(got, d) }}
	for _, chunk := range []string{"I: Retrieving In", "Release \nW: a warning\nI: Configuring systemd...\nI: par", "tial"} {
		if n, err := w.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatal(n, err)
		}
	}
	if want := []string{"Retrieving InRelease", "Configuring systemd..."}; !slices.Equal(got, want) {
		t.Fatalf("reported %q, want %q", got, want)
	}
}
