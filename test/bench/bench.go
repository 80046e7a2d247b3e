package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"banger/internal/initrd"
	"banger/internal/vmm/qemu"
)

// bench is one run: its temporary directory, namespace and cleanup steps.
type bench struct {
	o     options
	root  string // repository root
	guest guestFiles
	dir   string // the run's temporary directory (bangerbench-*)
	ns    *netns
	undo  cleanupStack

	tscKHz int
	key    ssh.Signer
	seed   string // work disk content: .ssh/authorized_keys
	raw    rawNet
	bg     *banger
	repo   *benchRepo // the workspace copy-in rows' repository
}

// newBench checks the host and makes the run's temporary directory.
func newBench(o options) (*bench, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("must run as root (network namespace, bridge, tap)")
	}
	for _, tool := range []string{"ip", "qemu-system-x86_64", "qemu-img", "mkfs.ext4", "ssh", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("missing tool %s", tool)
		}
	}
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	g, err := findGuest(root, o.guest)
	if err != nil {
		return nil, err
	}
	tsc, err := qemu.HostTSCkHz()
	if err != nil {
		return nil, fmt.Errorf("host TSC frequency (needed for tsc_early_khz): %w", err)
	}
	dir, err := os.MkdirTemp("", "bangerbench-")
	if err != nil {
		return nil, err
	}
	b := &bench{o: o, root: root, guest: g, dir: dir, tscKHz: tsc, ns: &netns{}}
	b.undo.push("remove "+dir, func(context.Context) error { return os.RemoveAll(dir) })
	return b, nil
}

// run prepares both ways, times them alternately, then times copying the
// generated repository into one VM both ways, alternately, then VM starts
// with a warm and an empty tap pool (-only picks one phase).
func (b *bench) run(ctx context.Context) (*report, error) {
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	rep := b.newReport()
	phase := func(p string) bool { return b.o.only == "" || b.o.only == p }
	for i := 1; phase("boot") && i <= b.o.n; i++ {
		if err := b.rawIteration(ctx, i, rep); err != nil {
			return nil, fmt.Errorf("raw %d: %w", i, err)
		}
		if err := b.bangerIteration(ctx, i, rep); err != nil {
			return nil, fmt.Errorf("banger %d: %w", i, err)
		}
	}
	if phase("workspace") {
		if err := b.workspaceRuns(ctx, rep); err != nil {
			return nil, fmt.Errorf("workspace copy-in: %w", err)
		}
	}
	if phase("pool") {
		if err := b.poolRuns(ctx, rep); err != nil {
			return nil, fmt.Errorf("tap pool: %w", err)
		}
	}
	return rep, nil
}

// setup builds banger, makes the namespace, the SSH key, the raw network,
// the banger home and the copy-in repository, and starts the daemon so
// later timings exclude its start.
func (b *bench) setup(ctx context.Context) error {
	logf("run directory %s", b.dir)
	bg, err := buildBanger(ctx, b.root, b.dir)
	if err != nil {
		return err
	}
	// The raw runs boot banger's initramfs too (without the agent: they wait for SSH).
	if b.guest.initrd, err = initrd.Build(filepath.Join(b.dir, "initrd"), initrd.Spec{
		Init: filepath.Join(bg.bin, "banger-init"), Modules: b.guest.modules}); err != nil {
		return err
	}
	ns, err := newNetns(ctx, &b.undo)
	if err != nil {
		return err
	}
	b.ns = ns
	logf("network namespace %s", ns.name)
	if err := b.makeKey(); err != nil {
		return err
	}
	if b.raw, err = setupRawNet(ctx, ns); err != nil {
		return err
	}
	bg.ns = ns
	b.bg = bg
	if err := bg.setupHome(); err != nil {
		return err
	}
	// Pushed before anything can start the daemon; LIFO order deletes the
	// VMs before the daemon stops.
	b.undo.push("stop banger daemon", bg.stopDaemon)
	b.undo.push("delete banger VMs", bg.deleteAllVMs)
	if err := bg.prepare(ctx, b.guest); err != nil {
		return err
	}
	return b.makeRepo(ctx)
}

// makeKey generates the ed25519 key of the raw guests and the work disk
// content that authorizes it.
func (b *bench) makeKey() error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	if b.key, err = ssh.NewSignerFromKey(priv); err != nil {
		return err
	}
	b.seed = filepath.Join(b.dir, "work-seed")
	if err := os.MkdirAll(filepath.Join(b.seed, ".ssh"), 0o700); err != nil {
		return err
	}
	if err := os.Chmod(b.seed, 0o700); err != nil {
		return err
	}
	pub := ssh.MarshalAuthorizedKey(b.key.PublicKey())
	return os.WriteFile(filepath.Join(b.seed, ".ssh", "authorized_keys"), pub, 0o600)
}

// cleanup runs every cleanup step; see cleanupStack.
func (b *bench) cleanup() error { return b.undo.run() }

// guestFiles is the test guest built by test/fixture/build-guest.sh.
type guestFiles struct {
	dir, kernel, modules, rootfs, release string
	initrd                                string // banger's initramfs for the raw runs (made in setup)
}

func findGuest(root, dir string) (guestFiles, error) {
	const hint = "build it with `sudo test/fixture/build-guest.sh` (or pass -guest DIR)"
	if dir == "" {
		out, err := runCmd(context.Background(), "bash", filepath.Join(root, "test/fixture/build-guest.sh"), "--print-dir")
		if err != nil {
			return guestFiles{}, err
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		dir = lines[len(lines)-1]
	}
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return guestFiles{}, fmt.Errorf("test guest %s is missing or incomplete (no .complete): %s", dir, hint)
	}
	g := guestFiles{dir: dir, kernel: filepath.Join(dir, "vmlinuz"), modules: filepath.Join(dir, "modules"),
		rootfs: filepath.Join(dir, "rootfs.ext4")}
	for _, f := range []string{g.kernel, g.modules, g.rootfs} {
		if _, err := os.Stat(f); err != nil {
			return guestFiles{}, fmt.Errorf("test guest: %w: %s", err, hint)
		}
	}
	rel, err := os.ReadFile(filepath.Join(dir, "kernel-release"))
	if err != nil {
		return guestFiles{}, fmt.Errorf("test guest: %w: %s", err, hint)
	}
	g.release = strings.TrimSpace(string(rel))
	g.modules = filepath.Join(g.modules, g.release)
	return g, nil
}

// repoRoot finds the directory holding go.mod of module banger.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module banger\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the banger repository (go.mod of module banger not found)")
		}
		dir = parent
	}
}

// goBinary is the go command that builds banger.
func goBinary() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// cleanupStack holds undo steps; run executes all of them in reverse order,
// each with its own timeout (never the run's canceled context), and joins the
// errors rather than stopping at the first.
type cleanupStack struct {
	steps []cleanupStep
}

type cleanupStep struct {
	what string
	fn   func(ctx context.Context) error
}

func (s *cleanupStack) push(what string, fn func(ctx context.Context) error) {
	s.steps = append(s.steps, cleanupStep{what, fn})
}

func (s *cleanupStack) run() error {
	var errs []error
	for i := len(s.steps) - 1; i >= 0; i-- {
		st := s.steps[i]
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		err := st.fn(ctx)
		cancel()
		if err != nil {
			logf("cleanup: %s: %v", st.what, err)
			errs = append(errs, fmt.Errorf("%s: %w", st.what, err))
		}
	}
	s.steps = nil
	return errors.Join(errs...)
}
