// Package doctor checks whether this host can run banger: named checks run
// in parallel, each bounded in time, each answering PASS, WARN or FAIL with
// one line of evidence and, when not PASS, the exact fix.
//
// Doctor only looks: it never starts the daemon and never writes banger's
// directories. The store is read with store.OpenReadOnly from a private copy
// in $TMPDIR (see snapshotDB), and the KVM probe cache is read, never written.
//
//	doctor.go   Check, Result, Env, Run, Preflight
//	checks.go   the list of checks; host tools and devices
//	accel.go    accelerator (the QEMU driver's KVM probe), VMM choice, Firecracker
//	network.go  bridge/CIDR conflicts, tun, nftables
//	state.go    config, store, images, SSH key, daemon, ssh-config
//	helper.go   the root helper, when not running as root
package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/internal/config"
	"banger/internal/paths"
	"banger/internal/resolved"
	"banger/internal/store"
)

// Status is a check's verdict.
type Status string

const (
	Pass Status = "PASS"
	Warn Status = "WARN" // banger works, in a degraded or not yet set up way
	Fail Status = "FAIL" // something banger needs is missing or broken
)

// Result is the outcome of one check. Remedy is the exact fix (a package to
// install, a config key to set, a command to run) when Status is not PASS.
type Result struct {
	Name     string `json:"name"`
	Status   Status `json:"status"`
	Evidence string `json:"evidence"`
	Remedy   string `json:"remedy"`
}

// Check is one named check. Run must honour ctx; Run (the package function)
// gives up on it after Timeout (DefaultTimeout when zero).
type Check struct {
	Name    string
	Timeout time.Duration
	Run     func(ctx context.Context, env Env) Result
}

// DefaultTimeout bounds a check that sets no Timeout.
const DefaultTimeout = 10 * time.Second

// Env is what the checks look at: where banger's files are and how to find
// programs. Tests build one over a temporary layout and PATH.
type Env struct {
	// ConfigPath is the config.toml to validate and use.
	ConfigPath string
	Layout     paths.Layout
	// LookPath finds a program the way the daemon would (exec.LookPath).
	LookPath func(file string) (string, error)
	// Home is the user's home directory (for ~/.ssh/config).
	Home string
	// Executable is the running banger binary; bangerd is looked for next to it.
	Executable string
	// Resolver is how systemd-resolved is reached (zero: the real host).
	Resolver resolved.Host
	// UID is the user the daemon would run as (the effective uid).
	UID int
	// HelperPolicy is the root helper's policy file
	// (privileged.DefaultPolicyFile when empty).
	HelperPolicy string

	// RecipeCheck says whether a built-in image recipe can be built here
	// (nil: recipe.Check).
	RecipeCheck func(ctx context.Context, name string) error

	// facts caches what several checks read (config, store); Run fills it.
	facts *facts
}

// NewEnv returns the environment of the current process for layout l.
func NewEnv(l paths.Layout) Env {
	home, _ := os.UserHomeDir()
	exe, _ := os.Executable()
	return Env{ConfigPath: l.ConfigFile(), Layout: l, LookPath: exec.LookPath, Home: home, Executable: exe, UID: os.Geteuid()}
}

// LookPathIn returns a LookPath that searches the given PATH list (a
// colon-separated string) instead of the process's $PATH.
func LookPathIn(pathList string) func(string) (string, error) {
	return func(file string) (string, error) {
		if strings.Contains(file, "/") {
			if err := executable(file); err != nil {
				return "", &exec.Error{Name: file, Err: err}
			}
			return file, nil
		}
		for _, dir := range filepath.SplitList(pathList) {
			if dir == "" || !filepath.IsAbs(dir) {
				continue
			}
			if p := filepath.Join(dir, file); executable(p) == nil {
				return p, nil
			}
		}
		return "", &exec.Error{Name: file, Err: exec.ErrNotFound}
	}
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

func (e Env) lookPath(file string) (string, error) {
	if e.LookPath == nil {
		return exec.LookPath(file)
	}
	return e.LookPath(file)
}

// facts are read once per Run and shared by the checks.
type facts struct {
	cfgOnce sync.Once
	cfg     config.Config
	cfgErr  error

	stateOnce sync.Once
	state     stateInfo
}

// stateInfo is what doctor read from the store.
type stateInfo struct {
	exists bool // the database file exists
	err    error
	schema int
	images []store.Image
	vms    int
}

func (e Env) withFacts() Env {
	if e.facts == nil {
		e.facts = &facts{}
	}
	return e
}

// config returns the configuration, or the defaults and the error when the
// file does not load (the config check reports that error).
func (e Env) config() (config.Config, error) {
	load := func() (config.Config, error) {
		c, err := config.Load(e.ConfigPath)
		if err != nil {
			return config.Defaults(), err
		}
		return c, nil
	}
	if e.facts == nil {
		return load()
	}
	e.facts.cfgOnce.Do(func() { e.facts.cfg, e.facts.cfgErr = load() })
	return e.facts.cfg, e.facts.cfgErr
}

// cfg is config() for checks that only need values: an invalid file gives
// the defaults.
func (e Env) cfg() config.Config {
	c, _ := e.config()
	return c
}

// stateFacts reads the store read-only: schema version, images, VM count.
func (e Env) stateFacts() stateInfo {
	read := func() stateInfo {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return readState(ctx, e.Layout.Database())
	}
	if e.facts == nil {
		return read()
	}
	e.facts.stateOnce.Do(func() { e.facts.state = read() })
	return e.facts.state
}

func readState(ctx context.Context, db string) stateInfo {
	var si stateInfo
	if _, err := os.Stat(db); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			si.exists, si.err = true, err
		}
		return si
	}
	si.exists = true
	snap, cleanup, err := snapshotDB(db)
	if err != nil {
		si.err = err
		return si
	}
	defer cleanup()
	s, err := store.OpenReadOnly(ctx, snap)
	if err != nil {
		si.err = fmt.Errorf("open %s read-only: %w", db, err)
		return si
	}
	defer s.Close()
	if si.schema, err = s.SchemaVersion(ctx); err != nil {
		si.err = fmt.Errorf("read schema version of %s: %w", db, err)
		return si
	}
	if si.images, err = s.ListImages(ctx); err != nil {
		si.err = fmt.Errorf("list images in %s: %w", db, err)
		return si
	}
	vms, err := s.ListVMs(ctx)
	if err != nil {
		si.err = fmt.Errorf("list VMs in %s: %w", db, err)
		return si
	}
	si.vms = len(vms)
	return si
}

// snapshotDB copies the database (and its write-ahead log, when a daemon has
// one open) into a private temporary directory and returns the copy's path.
// Doctor reads the copy: SQLite opens even a read-only connection to a WAL
// database by creating -wal and -shm files next to it, which would write to
// the state directory. The copy is retried when the files change under it.
func snapshotDB(db string) (string, func(), error) {
	dir, err := os.MkdirTemp("", "banger-doctor-")
	if err != nil {
		return "", nil, fmt.Errorf("copy %s for reading: %w", db, err)
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	snap := filepath.Join(dir, filepath.Base(db))
	stamp := func() string {
		var b strings.Builder
		for _, f := range []string{db, db + "-wal"} {
			if st, err := os.Stat(f); err == nil {
				fmt.Fprintf(&b, "%s %d %d;", f, st.Size(), st.ModTime().UnixNano())
			}
		}
		return b.String()
	}
	for range 3 {
		before := stamp()
		// The log first: a checkpoint copies pages from it into the database.
		err := copyFile(db+"-wal", snap+"-wal")
		if errors.Is(err, os.ErrNotExist) {
			_ = os.Remove(snap + "-wal")
			err = nil
		}
		if err == nil {
			err = copyFile(db, snap)
		}
		if err != nil {
			cleanup()
			return "", nil, fmt.Errorf("copy %s for reading: %w", db, err)
		}
		if stamp() == before {
			return snap, cleanup, nil
		}
	}
	cleanup()
	return "", nil, fmt.Errorf("%s kept changing while doctor copied it; run doctor again", db)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Run runs checks in parallel, each under its own timeout, and returns their
// results in the order of checks.
func Run(ctx context.Context, env Env, checks []Check) []Result {
	env = env.withFacts()
	out := make([]Result, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = runOne(ctx, env, c)
		}()
	}
	wg.Wait()
	return out
}

func runOne(ctx context.Context, env Env, c Check) Result {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := make(chan Result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- Result{Status: Fail, Evidence: fmt.Sprintf("the check panicked: %v", p),
					Remedy: "report this as a banger bug"}
			}
		}()
		done <- c.Run(cctx, env)
	}()
	var r Result
	select {
	case r = <-done:
	case <-cctx.Done():
		// A check that ignores its context is abandoned, not waited for.
		select {
		case r = <-done:
		case <-time.After(100 * time.Millisecond):
			r = Result{Status: Fail, Evidence: fmt.Sprintf("did not finish within %s (%v)", timeout, cctx.Err()),
				Remedy: "re-run `banger doctor`; if it persists, find what blocks the " + c.Name + " check"}
		}
	}
	r.Name = c.Name
	r.Evidence = oneLine(r.Evidence)
	r.Remedy = oneLine(r.Remedy)
	if r.Status == "" {
		r.Status = Fail
	}
	if r.Status == Pass {
		r.Remedy = ""
	}
	return r
}

// oneLine folds s onto a single line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	var parts []string
	for _, l := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// Find returns the checks with these names, in the order given.
func Find(names ...string) ([]Check, error) {
	all := Checks()
	byName := make(map[string]Check, len(all))
	for _, c := range all {
		byName[c.Name] = c
	}
	var out []Check
	var unknown []string
	for _, n := range names {
		c, ok := byName[n]
		if !ok {
			unknown = append(unknown, n)
			continue
		}
		out = append(out, c)
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("unknown doctor check %s (known: %s)", strings.Join(unknown, ", "), strings.Join(Names(), ", "))
	}
	return out, nil
}

// Names lists every check's name in order.
func Names() []string {
	var out []string
	for _, c := range Checks() {
		out = append(out, c.Name)
	}
	return out
}

// Preflight runs the named checks (all of them when names is empty) for a
// command that needs them. The error is non-nil when a name is unknown or a
// check FAILs; it names each failure with its fix.
func Preflight(ctx context.Context, env Env, names ...string) ([]Result, error) {
	checks := Checks()
	if len(names) > 0 {
		var err error
		if checks, err = Find(names...); err != nil {
			return nil, err
		}
	}
	rs := Run(ctx, env, checks)
	return rs, Failed(rs)
}

// Failed returns an error describing every FAIL in rs, or nil.
func Failed(rs []Result) error {
	var errs []error
	for _, r := range rs {
		if r.Status == Fail {
			errs = append(errs, fmt.Errorf("%s: %s (fix: %s)", r.Name, r.Evidence, r.Remedy))
		}
	}
	return errors.Join(errs...)
}

func pass(evidence string) Result {
	return Result{Status: Pass, Evidence: evidence}
}

func warn(evidence, remedy string) Result {
	return Result{Status: Warn, Evidence: evidence, Remedy: remedy}
}

func fail(evidence, remedy string) Result {
	return Result{Status: Fail, Evidence: evidence, Remedy: remedy}
}
