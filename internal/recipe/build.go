package recipe

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/oci"
)

// Stage names of a recipe build, in order.
const (
	StageDebootstrap = "debootstrap"
	StageConfigure   = "configure"
	StageWorkSeed    = "work seed"
	StageExt4        = "build ext4"
)

// What Build writes into its directory.
const (
	RootFSFile   = "rootfs.ext4"
	SeedDir      = "work-seed"
	ManifestFile = "recipe.json"
	treeDir      = ".tree" // the debootstrap target, removed when Build returns
)

// StageRunner runs fn as the named stage (timing and reporting it); nil
// runs it unreported.
type StageRunner func(name string, fn func() error) error

// Options tune a build; the zero value builds from the host's apt source.
type Options struct {
	// Mirror is the Debian archive to install from; "" uses the one apt on
	// this host uses for the recipe's suite.
	Mirror string
	// Proxy is the HTTP proxy for downloads; "" uses apt's
	// Acquire::http::Proxy (debootstrap's wget does not read apt's).
	Proxy string
	// Size of rootfs.ext4 in bytes; 0 sizes it from the content.
	Size int64
	// Log receives debootstrap's output (nil discards it; the tail is kept
	// for errors either way).
	Log io.Writer
	// Progress, when set, receives what debootstrap is doing during the
	// debootstrap stage (its "I: ..." lines without the prefix, e.g.
	// "Retrieving git 1:2.39.5-0+deb12u3", "Configuring systemd...").
	Progress func(detail string)
}

// Package is one installed Debian package.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Manifest is what recipe.json records about a build.
type Manifest struct {
	Recipe string `json:"recipe"`
	// Hash is the recipe hash (Recipe.Hash) the image was built from.
	Hash   string `json:"hash"`
	Suite  string `json:"suite"`
	Mirror string `json:"mirror"`
	// Packages are every package installed, with versions (dpkg-query).
	Packages []Package `json:"packages"`
	// ContentBytes is the file content of the root filesystem.
	ContentBytes int64 `json:"content_bytes"`
	// RootFSBytes is the size of rootfs.ext4; RootFSAllocatedBytes what it
	// occupies on the host (it is sparse).
	RootFSBytes          int64 `json:"rootfs_bytes"`
	RootFSAllocatedBytes int64 `json:"rootfs_allocated_bytes"`
	// WorkSeedBytes is the file content of work-seed/ (the image's /root).
	WorkSeedBytes int64 `json:"work_seed_bytes"`
	// StageSeconds times each stage; BuildSeconds the whole build.
	StageSeconds map[string]float64 `json:"stage_seconds"`
	BuildSeconds float64            `json:"build_seconds"`
	BuiltAt      time.Time          `json:"built_at"`
}

// Result describes a finished build.
type Result struct {
	RootFS   string // dir/rootfs.ext4
	WorkSeed string // dir/work-seed: the image's /root, applied to new work disks
	Manifest Manifest
}

// ErrNotRoot is returned (wrapped) when Build does not run as root.
var ErrNotRoot = errors.New("needs root")

func notRoot(r *Recipe) error {
	return fmt.Errorf("building image recipe %s %w: debootstrap runs package scripts in a chroot and creates files owned by other users (run bangerd as root, or build internal/recipe/%s/Dockerfile with Docker)",
		r.Name, ErrNotRoot, r.Name)
}

// buildTools are the host tools Build runs (besides e2fsprogs, which
// oci.BuildExt4 checks, and apt, which finds the host's archive).
var buildTools = []string{"debootstrap", "chroot", "dpkg-query", "cp"}

// Build installs the recipe with debootstrap into dir/.tree, configures
// it, copies its /root to dir/work-seed and makes dir/rootfs.ext4 and
// dir/recipe.json. dir must be an existing, empty directory (e.g. an image
// store's staging directory; the caller renames it into place). The image
// keeps its own /root too, so a VM without a work disk, or an image
// registered from rootfs.ext4 alone, still has the dotfiles.
//
// It needs root: debootstrap runs package scripts in a chroot and the tree
// holds files of other owners. External tools run with argv, in their own
// process group, killed on cancel. On error or cancel every mount under the
// tree is detached and everything Build wrote in dir is removed.
func Build(ctx context.Context, r *Recipe, dir string, opts Options, run StageRunner) (res Result, err error) {
	if run == nil {
		run = func(_ string, fn func() error) error { return fn() }
	}
	if os.Geteuid() != 0 {
		return res, notRoot(r)
	}
	if opts.Size < 0 {
		return res, fmt.Errorf("image size %d: must not be negative", opts.Size)
	}
	if err := checkEmptyDir(dir); err != nil {
		return res, err
	}
	for _, t := range buildTools {
		if _, err := lookTool(t); err != nil {
			return res, err
		}
	}
	start := time.Now()
	tree := filepath.Join(dir, treeDir)
	defer func() {
		if derr := removeTree(tree); derr != nil && err == nil {
			err = derr
		}
		if err != nil {
			for _, f := range []string{RootFSFile, SeedDir, ManifestFile} {
				os.RemoveAll(filepath.Join(dir, f))
			}
		}
	}()
	mirror, proxy := opts.Mirror, opts.Proxy
	if mirror == "" {
		if mirror, err = hostMirror(ctx, r.Suite); err != nil {
			return res, err
		}
	}
	if proxy == "" {
		proxy = aptProxy(ctx)
	}
	m := Manifest{Recipe: r.Name, Hash: r.Hash, Suite: r.Suite, Mirror: mirror, StageSeconds: map[string]float64{}}
	timed := func(name string, fn func() error) error {
		return run(name, func() error {
			t0 := time.Now()
			err := fn()
			m.StageSeconds[name] = time.Since(t0).Seconds()
			return err
		})
	}

	if err := timed(StageDebootstrap, func() error {
		return debootstrap(ctx, r, tree, mirror, proxy, opts.Log, opts.Progress)
	}); err != nil {
		return res, err
	}
	if err := timed(StageConfigure, func() error {
		if err := configure(ctx, r, tree); err != nil {
			return err
		}
		m.Packages, err = packages(ctx, tree)
		return err
	}); err != nil {
		return res, err
	}
	res.WorkSeed = filepath.Join(dir, SeedDir)
	if err := timed(StageWorkSeed, func() error {
		if _, err := runTool(ctx, nil, "cp", "-a", "--no-target-directory", filepath.Join(tree, "root"), res.WorkSeed); err != nil {
			return err
		}
		m.WorkSeedBytes, err = oci.ContentBytes(res.WorkSeed)
		return err
	}); err != nil {
		return res, err
	}
	res.RootFS = filepath.Join(dir, RootFSFile)
	if err := timed(StageExt4, func() error {
		if m.ContentBytes, err = oci.ContentBytes(tree); err != nil {
			return err
		}
		man, err := oci.ScanDir(ctx, tree)
		if err != nil {
			return err
		}
		if err := oci.BuildExt4(ctx, tree, man, res.RootFS, opts.Size); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Stat(res.RootFS, &st); err != nil {
			return err
		}
		m.RootFSBytes, m.RootFSAllocatedBytes = st.Size, st.Blocks*512
		return nil
	}); err != nil {
		return res, err
	}
	m.BuildSeconds = time.Since(start).Seconds()
	m.BuiltAt = time.Now().UTC().Truncate(time.Second)
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return res, err
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), append(b, '\n'), 0o644); err != nil {
		return res, err
	}
	res.Manifest = m
	return res, nil
}

func checkEmptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("build directory: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("build directory %s is not empty", dir)
	}
	return nil
}

// debootstrap installs the recipe's packages on debootstrap's minbase.
func debootstrap(ctx context.Context, r *Recipe, tree, mirror, proxy string, log io.Writer, progress func(string)) error {
	var env []string
	if proxy != "" {
		env = []string{"http_proxy=" + proxy}
	}
	if progress != nil {
		lw := &infoLines{report: progress}
		if log != nil {
			log = io.MultiWriter(log, lw)
		} else {
			log = lw
		}
	}
	args := []string{"--variant=minbase", "--components=" + strings.Join(r.Components, ","),
		"--include=" + strings.Join(r.Packages, ","), r.Suite, tree, mirror}
	_, err := runTool(ctx, &toolIO{env: env, log: log}, "debootstrap", args...)
	// debootstrap unmounts what it mounted, but make sure before going on.
	if derr := detachMounts(tree); derr != nil && err == nil {
		err = derr
	}
	return err
}

// infoLines passes the text of each complete "I: " line written to it to
// report.
type infoLines struct {
	report  func(string)
	partial []byte
}

func (w *infoLines) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		if line, ok := strings.CutPrefix(string(w.partial[:i]), "I: "); ok {
			w.report(strings.TrimSpace(line))
		}
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 64<<10 { // no newline for that long: not a log line
		w.partial = w.partial[:0]
	}
	return len(p), nil
}

// configure applies the recipe's files and settings to the installed tree.
func configure(ctx context.Context, r *Recipe, tree string) error {
	root, err := os.OpenRoot(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, f := range r.Files {
		if err := install(root, f, "."); err != nil {
			return err
		}
	}
	if err := install(root, r.Root, "root"); err != nil {
		return err
	}
	if err := root.Chmod("root", 0o700); err != nil {
		return err
	}

	// Identity: every VM gets its own machine-id and SSH host key on first
	// boot; hostname and addresses come from banger's kernel command line.
	for _, w := range []struct {
		path, data string
	}{
		{"etc/machine-id", ""},
		{"etc/hostname", r.Name + "\n"},
		{"etc/hosts", "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"},
		{"etc/resolv.conf", ""}, // debootstrap copied the host's; banger's initramfs writes the VM's
		{"etc/fstab", "# banger: / (root=) and /root (banger.work=) are mounted by the initramfs;\n# nothing here, so systemd waits for no device unit.\n"},
	} {
		if err := writeFile(root, w.path, []byte(w.data)); err != nil {
			return err
		}
	}
	keys, _ := fs.Glob(root.FS(), "etc/ssh/ssh_host_*")
	for _, p := range append(keys, "var/lib/dbus/machine-id") {
		if err := root.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}

	// Units and generators.
	for _, u := range []struct {
		verb  string
		units []string
	}{{"enable", r.Enable}, {"disable", r.Disable}, {"mask", r.Mask}} {
		if len(u.units) == 0 {
			continue
		}
		if _, err := runTool(ctx, nil, "chroot", append([]string{tree, "systemctl", u.verb}, u.units...)...); err != nil {
			return err
		}
	}
	if err := root.MkdirAll("etc/systemd/system-generators", 0o755); err != nil {
		return err
	}
	for _, g := range r.DisableGenerators {
		if _, err := root.Lstat(path.Join("lib/systemd/system-generators", g)); err != nil {
			return fmt.Errorf("recipe %s: no generator %s in the image: %w", r.Name, g, err)
		}
		link := path.Join("etc/systemd/system-generators", g)
		if err := root.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := root.Symlink("/dev/null", link); err != nil {
			return err
		}
	}
	if err := sshWithoutNetworkTarget(root); err != nil {
		return err
	}

	// Nothing a VM needs: downloaded packages, package lists (apt-get update
	// restores them), debootstrap's log, device nodes (/dev is a devtmpfs in
	// the guest) and run-time state (/run is a tmpfs).
	for _, d := range []string{"var/cache/apt/archives", "var/lib/apt/lists", "dev", "run"} {
		if err := emptyDir(root, d); err != nil {
			return err
		}
	}
	if err := root.Remove("var/log/bootstrap.log"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, d := range []string{"var/cache/apt/archives/partial", "var/lib/apt/lists/partial"} {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return markUpdated(root)
}

// install copies every file of src into root under dir: files root-owned
// 0644 (replacing, never writing through, what is there), new directories
// 0755.
func install(root *os.Root, src fs.FS, dir string) error {
	return fs.WalkDir(src, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := path.Join(dir, p)
		if d.IsDir() {
			if err := root.MkdirAll(dst, 0o755); err != nil {
				return fmt.Errorf("install %s: %w", dst, err)
			}
			return nil
		}
		b, err := fs.ReadFile(src, p)
		if err != nil {
			return err
		}
		return writeFile(root, dst, b)
	})
}

// writeFile replaces p in root with a new root-owned 0644 file.
func writeFile(root *os.Root, p string, data []byte) error {
	if err := root.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("install /%s: %w", p, err)
	}
	f, err := root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("install /%s: %w", p, err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Chmod(p, 0o644) // whatever the umask
	}
	if err == nil {
		err = root.Lchown(p, 0, 0)
	}
	if err != nil {
		return fmt.Errorf("install /%s: %w", p, err)
	}
	return nil
}

// sshWithoutNetworkTarget overrides ssh.service with Debian's own minus
// After=network.target: sshd listens on the wildcard address, so it need
// not wait for systemd-networkd (seconds under TCG). A drop-in cannot
// remove an After=; ssh.service.d/ drop-ins still apply.
func sshWithoutNetworkTarget(root *os.Root) error {
	b, err := fs.ReadFile(root.FS(), "lib/systemd/system/ssh.service")
	if err != nil {
		return fmt.Errorf("ssh.service: %w (is openssh-server in the package list?)", err)
	}
	var out strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "After=") {
			deps := slices.DeleteFunc(strings.Fields(strings.TrimPrefix(line, "After=")), func(d string) bool { return d == "network.target" })
			line = "After=" + strings.Join(deps, " ")
		}
		out.WriteString(line + "\n")
	}
	if strings.Contains(out.String(), "network.target") {
		return errors.New("ssh.service: could not drop network.target from it")
	}
	return writeFile(root, "etc/systemd/system/ssh.service", []byte(out.String()))
}

// emptyDir removes everything inside dir (never following symlinks out).
func emptyDir(root *os.Root, dir string) error {
	ents, err := fs.ReadDir(root.FS(), dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := root.RemoveAll(path.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// markUpdated marks /etc and /var as up to date with /usr, as
// systemd-update-done does after a boot; otherwise every fresh VM counts as
// "updated" and runs the ConditionNeedsUpdate= units (ldconfig, hwdb,
// sysusers, journal catalog): seconds of CPU under TCG. Installing
// packages in the guest touches /usr and re-arms them, as intended.
// (mkfs.ext4 -d keeps the mtimes.)
func markUpdated(root *os.Root) error {
	usr, err := root.Stat("usr")
	if err != nil {
		return err
	}
	mt := usr.ModTime()
	for _, d := range []string{"etc", "var"} {
		p := path.Join(d, ".updated")
		data := fmt.Sprintf("# Written by banger's image recipe build (see systemd-update-done.service(8)).\nTIMESTAMP_NSEC=%d\n", mt.UnixNano())
		if err := writeFile(root, p, []byte(data)); err != nil {
			return err
		}
		if err := root.Chtimes(p, mt, mt); err != nil {
			return err
		}
	}
	return nil
}

// packages lists the tree's installed packages with dpkg-query.
func packages(ctx context.Context, tree string) ([]Package, error) {
	out, err := runTool(ctx, nil, "dpkg-query", "--admindir="+filepath.Join(tree, "var/lib/dpkg"), "-W",
		"-f=${db:Status-Abbrev}\t${Package}\t${Version}\n")
	if err != nil {
		return nil, err
	}
	var pkgs []Package
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, "\t")
		if len(f) == 3 && strings.HasPrefix(f[0], "ii") {
			pkgs = append(pkgs, Package{Name: f[1], Version: f[2]})
		}
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Name < pkgs[j].Name })
	if len(pkgs) == 0 {
		return nil, errors.New("dpkg-query found no installed packages in the tree")
	}
	return pkgs, nil
}

// hostMirror returns the archive apt on this host uses for suite.
func hostMirror(ctx context.Context, suite string) (string, error) {
	out, err := runTool(ctx, nil, "apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE) $(TARGET_OF)")
	if err != nil {
		return "", fmt.Errorf("finding the host's Debian archive for %s (set a mirror explicitly): %w", suite, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[1] == suite && f[2] == "deb" {
			return f[0], nil
		}
	}
	return "", fmt.Errorf("no apt source for Debian %s on this host (add one to /etc/apt/sources.list.d and run apt-get update, or set a mirror explicitly)", suite)
}

var aptShellRE = regexp.MustCompile(`^p='(.*)'$`)

// aptProxy returns apt's Acquire::http::Proxy, or "".
func aptProxy(ctx context.Context) string {
	out, err := runTool(ctx, nil, "apt-config", "shell", "p", "Acquire::http::Proxy")
	if err != nil {
		return ""
	}
	if m := aptShellRE.FindStringSubmatch(strings.TrimSpace(string(out))); m != nil {
		return m[1]
	}
	return ""
}
