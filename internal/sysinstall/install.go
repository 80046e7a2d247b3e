package sysinstall

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/hostnet"
	"banger/internal/paths"
	"banger/internal/privileged"
)

// DefaultBinDir is where the binaries go.
const DefaultBinDir = "/usr/local/bin"

// unitDir is where the unit files go.
const unitDir = "/etc/systemd/system"

// Binaries are the programs installed; the first three are required.
var Binaries = []string{"banger", "bangerd", "bangerd-root", "banger-agent"}

const requiredBinaries = 3

// Options configure Install, Uninstall and Status.
type Options struct {
	// Root is the prefix every path is written below ("/" for the real
	// system, a staging directory otherwise). Units are enabled only
	// when Root is "/".
	Root string
	// Owner is the user name the daemon runs as (Install).
	Owner string
	// SourceDir holds the built binaries (default: the directory of the
	// running executable).
	SourceDir string
	// BinDir is where the binaries are installed (DefaultBinDir).
	BinDir string
	// Purge also removes the state directories (Uninstall).
	Purge bool
	// Out receives one line per step.
	Out io.Writer
	// Systemctl runs systemctl (tests replace it); nil runs the real one.
	Systemctl func(ctx context.Context, args ...string) error
	// SystemdRunning reports whether systemd is PID 1 (tests replace it).
	SystemdRunning func() bool
}

func (o *Options) defaults() error {
	if o.Root == "" {
		o.Root = "/"
	}
	if !filepath.IsAbs(o.Root) {
		return fmt.Errorf("--root %q: must be an absolute path", o.Root)
	}
	o.Root = filepath.Clean(o.Root)
	if st, err := os.Stat(o.Root); err != nil || !st.IsDir() {
		return fmt.Errorf("--root %s: not a directory", o.Root)
	}
	if o.BinDir == "" {
		o.BinDir = DefaultBinDir
	}
	if !filepath.IsAbs(o.BinDir) || filepath.Clean(o.BinDir) != o.BinDir {
		return fmt.Errorf("--bin-dir %q: must be an absolute, clean path", o.BinDir)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Systemctl == nil {
		o.Systemctl = func(ctx context.Context, args ...string) error {
			out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
			}
			return nil
		}
	}
	if o.SystemdRunning == nil {
		o.SystemdRunning = SystemdRunning
	}
	return nil
}

// SystemdRunning reports whether systemd manages this machine.
func SystemdRunning() bool {
	st, err := os.Stat("/run/systemd/system")
	return err == nil && st.IsDir()
}

// at returns p (an installed path) below the root.
func (o *Options) at(p string) string { return filepath.Join(o.Root, p) }

// manages tells whether install should enable the units.
func (o *Options) manages() bool { return o.Root == "/" && o.SystemdRunning() }

// Install installs banger for opts.Owner. On failure everything written so
// far is removed again, in reverse order.
func Install(ctx context.Context, opts Options) (m Metadata, err error) {
	if err := opts.defaults(); err != nil {
		return m, err
	}
	if opts.Owner == "" {
		return m, errors.New("--owner USER is required: the user the daemon runs as")
	}
	u, err := user.Lookup(opts.Owner)
	if err != nil {
		return m, fmt.Errorf("--owner %q: %w (create the user first or name an existing one)", opts.Owner, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 {
		return m, errors.New("--owner root: the owner must be an ordinary user (root can run bangerd directly, without the helper)")
	}
	group := u.Gid
	if g, err := user.LookupGroupId(u.Gid); err == nil {
		group = g.Name
	}
	if _, err := os.Stat(opts.at(MetaFile)); err == nil {
		return m, fmt.Errorf("banger is already installed (%s exists); run `banger system uninstall` first", opts.at(MetaFile))
	}
	if opts.SourceDir == "" {
		self, err := os.Executable()
		if err != nil {
			return m, err
		}
		opts.SourceDir = filepath.Dir(self)
	}
	layout, _ := paths.Resolve(true)
	cfg, err := config.Load(opts.at(layout.ConfigFile()))
	if err != nil {
		return m, err
	}
	netCfg := hostnet.Config{Bridge: cfg.Network.Bridge, CIDR: cfg.CIDR(), TapPrefix: hostnet.DefaultTapPrefix}
	if err := netCfg.Validate(); err != nil {
		return m, fmt.Errorf("network: %w", err)
	}
	vmms := vmmBinaries(cfg)
	if len(vmms) == 0 {
		return m, fmt.Errorf("no VMM binary found (qemu.binary = %q, firecracker.binary = %q); install qemu-system-x86 or set qemu.binary in %s",
			cfg.QEMU.Binary, cfg.Firecracker.Binary, layout.ConfigFile())
	}

	policy := privileged.Policy{OwnerUID: uid, Socket: privileged.DefaultSocket,
		ManagedDirs: []string{layout.StateDir, layout.CacheDir, layout.RunDir},
		Bridge:      netCfg.Bridge, CIDR: netCfg.CIDR, TapPrefix: netCfg.TapPrefix, GuestToGuest: cfg.Network.GuestToGuest,
		VMMBinaries: vmms}
	if err := policy.Validate(); err != nil {
		return m, err
	}
	policyJSON, _ := json.MarshalIndent(policy, "", "  ")
	up := unitParams{BinDir: opts.BinDir, Owner: opts.Owner, Group: group, PolicyFile: privileged.DefaultPolicyFile,
		HelperSocket: policy.SocketPath()}

	// What to write: binaries, policy, units. Nothing may exist yet.
	type write struct {
		path string
		mode os.FileMode
		data func() ([]byte, error)
	}
	var writes []write
	for i, b := range Binaries {
		src := filepath.Join(opts.SourceDir, b)
		if _, err := os.Stat(src); err != nil {
			if i < requiredBinaries {
				return m, fmt.Errorf("%s not found next to banger (%s); build it with `go build -o %s ./cmd/%s`", b, src, opts.SourceDir, b)
			}
			fmt.Fprintf(opts.Out, "note: %s not found in %s; guests will boot without the agent\n", b, opts.SourceDir)
			continue
		}
		writes = append(writes, write{filepath.Join(opts.BinDir, b), 0o755, func() ([]byte, error) { return os.ReadFile(src) }})
	}
	writes = append(writes,
		write{privileged.DefaultPolicyFile, 0o644, func() ([]byte, error) { return append(policyJSON, '\n'), nil }},
		write{filepath.Join(unitDir, HelperUnit), 0o644, func() ([]byte, error) { return []byte(helperUnit(up)), nil }},
		write{filepath.Join(unitDir, DaemonUnit), 0o644, func() ([]byte, error) { return []byte(daemonUnit(up)), nil }},
	)
	var exist []string
	for _, w := range append(writes, write{path: MetaFile}) {
		if _, err := os.Lstat(opts.at(w.path)); err == nil {
			exist = append(exist, opts.at(w.path))
		}
	}
	if len(exist) > 0 {
		return m, fmt.Errorf("not overwriting files banger did not install: %s; move them away and run install again", strings.Join(exist, ", "))
	}

	m = Metadata{Version: api.Version, InstalledAt: time.Now().UTC(), Owner: opts.Owner, OwnerUID: uid, OwnerGID: gid,
		BinDir: opts.BinDir, PolicyFile: privileged.DefaultPolicyFile, DaemonSocket: layout.Socket(),
		HelperSocket: policy.SocketPath(), StateDirs: []string{layout.StateDir, layout.CacheDir, layout.RunDir, filepath.Dir(policy.SocketPath())},
		Units: []string{HelperUnit, DaemonUnit}, Systemd: opts.SystemdRunning()}
	defer func() {
		if err != nil {
			if uerr := undo(&opts, m); uerr != nil {
				err = fmt.Errorf("%w; undoing the install also failed: %v", err, uerr)
			}
		}
	}()
	for _, w := range writes {
		data, err := w.data()
		if err != nil {
			return m, err
		}
		if err := opts.writeFile(&m, w.path, data, w.mode); err != nil {
			return m, err
		}
		fmt.Fprintf(opts.Out, "wrote %s\n", opts.at(w.path))
	}
	if err := opts.mkdirs(&m, filepath.Dir(MetaFile)); err != nil {
		return m, err
	}
	if err := writeMeta(&opts, m); err != nil {
		return m, err
	}
	if !opts.manages() {
		if opts.Root != "/" {
			fmt.Fprintf(opts.Out, "staging root %s: units written, not enabled\n", opts.Root)
		} else {
			fmt.Fprintf(opts.Out, "systemd is not running on this machine: the units are written but not enabled.\n"+
				"Start the services by hand: as root `%s/bangerd-root -policy %s`, then as %s `BANGER_SYSTEM=1 BANGER_ROOT_HELPER=%s %s/bangerd --system`\n",
				opts.BinDir, privileged.DefaultPolicyFile, opts.Owner, policy.SocketPath(), opts.BinDir)
		}
		return m, nil
	}
	if err := opts.Systemctl(ctx, "daemon-reload"); err != nil {
		return m, err
	}
	m.Enabled = true // from here on, undo disables
	if err := writeMeta(&opts, m); err != nil {
		return m, err
	}
	if err := opts.Systemctl(ctx, "enable", "--now", HelperUnit, DaemonUnit); err != nil {
		return m, err
	}
	fmt.Fprintf(opts.Out, "enabled and started %s and %s\n", HelperUnit, DaemonUnit)
	return m, nil
}

// vmmBinaries resolves the configured VMM binaries to the real paths
// /proc/PID/exe will show.
func vmmBinaries(cfg config.Config) []string {
	var out []string
	for _, b := range []string{cfg.QEMU.Binary, cfg.Firecracker.Binary} {
		p, err := exec.LookPath(b)
		if err != nil {
			continue
		}
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		if abs, err := filepath.Abs(p); err == nil {
			out = append(out, abs)
		}
	}
	return out
}

// mkdirs creates dir and its missing parents, recording each one created.
func (o *Options) mkdirs(m *Metadata, dir string) error {
	var missing []string
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if _, err := os.Lstat(o.at(d)); err == nil {
			break
		}
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(o.at(missing[i]), 0o755); err != nil {
			return err
		}
		m.Dirs = append(m.Dirs, missing[i])
	}
	return nil
}

// writeFile writes one file (new: O_EXCL) and records it.
func (o *Options) writeFile(m *Metadata, path string, data []byte, mode os.FileMode) error {
	if err := o.mkdirs(m, filepath.Dir(path)); err != nil {
		return err
	}
	f, err := os.OpenFile(o.at(path), os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	m.Files = append(m.Files, File{Path: path, SHA256: hex.EncodeToString(sum[:]), Mode: mode})
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil { // the umask may have narrowed it
		f.Close()
		return err
	}
	return f.Close()
}

func writeMeta(o *Options, m Metadata) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := o.at(MetaFile) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, o.at(MetaFile))
}

// undo removes what a failed install wrote.
func undo(o *Options, m Metadata) error {
	var errs []error
	if m.Enabled {
		errs = append(errs, o.Systemctl(context.Background(), append([]string{"disable", "--now"}, m.Units...)...))
	}
	_, err := remove(o, m, false)
	return errors.Join(append(errs, err)...)
}

// Report says what Uninstall did.
type Report struct {
	Removed []string `json:"removed"`
	// Kept are files changed since install (or directories not empty),
	// left in place.
	Kept   []string `json:"kept,omitempty"`
	Purged []string `json:"purged,omitempty"`
}

// remove deletes the metadata's files (unchanged ones), the metadata, then
// the directories install created (empty ones), all in reverse order.
func remove(o *Options, m Metadata, keepChanged bool) (Report, error) {
	var r Report
	var errs []error
	for i := len(m.Files) - 1; i >= 0; i-- {
		f := m.Files[i]
		p := o.at(f.Path)
		sum, err := fileSHA256(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			errs = append(errs, err)
			continue
		case keepChanged && sum != f.SHA256:
			r.Kept = append(r.Kept, p+" (changed since install)")
			continue
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
			continue
		}
		r.Removed = append(r.Removed, p)
	}
	for _, p := range []string{o.at(MetaFile) + ".tmp", o.at(MetaFile)} {
		if err := os.Remove(p); err == nil {
			r.Removed = append(r.Removed, p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for i := len(m.Dirs) - 1; i >= 0; i-- {
		p := o.at(m.Dirs[i])
		if err := os.Remove(p); err == nil {
			r.Removed = append(r.Removed, p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			r.Kept = append(r.Kept, p+" (not empty)")
		}
	}
	return r, errors.Join(errs...)
}

// Uninstall disables the units (when install enabled them) and removes
// exactly what install wrote; with opts.Purge, also the state directories.
func Uninstall(ctx context.Context, opts Options) (Report, error) {
	if err := opts.defaults(); err != nil {
		return Report{}, err
	}
	m, err := ReadMetadata(opts.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return Report{}, fmt.Errorf("banger is not installed under %s (no %s)", opts.Root, opts.at(MetaFile))
	}
	if err != nil {
		return Report{}, err
	}
	var errs []error
	if m.Enabled && opts.manages() {
		errs = append(errs, opts.Systemctl(ctx, append([]string{"disable", "--now"}, m.Units...)...))
	}
	r, err := remove(&opts, m, true)
	errs = append(errs, err)
	if opts.manages() && m.Enabled {
		errs = append(errs, opts.Systemctl(ctx, "daemon-reload"))
	}
	if opts.Purge {
		for _, d := range m.StateDirs {
			p := opts.at(d)
			if _, err := os.Lstat(p); err != nil {
				continue
			}
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
				continue
			}
			r.Purged = append(r.Purged, p)
		}
	}
	return r, errors.Join(errs...)
}

// Status is what `banger system status` shows.
type Status struct {
	Installed bool      `json:"installed"`
	Root      string    `json:"root"`
	Meta      *Metadata `json:"install,omitempty"`
	// Files maps each installed file to "ok", "changed" or "missing".
	Files map[string]string `json:"files,omitempty"`
	// Systemd tells whether systemd runs now; Units maps each unit to
	// its active state ("not managed" without systemd).
	Systemd bool              `json:"systemd"`
	Units   map[string]string `json:"units,omitempty"`
	// Helper is "reachable", or why not.
	Helper string `json:"helper,omitempty"`
}

// GetStatus reads the metadata and checks the files, units and helper.
func GetStatus(ctx context.Context, opts Options) (Status, error) {
	if err := opts.defaults(); err != nil {
		return Status{}, err
	}
	st := Status{Root: opts.Root, Systemd: opts.SystemdRunning()}
	m, err := ReadMetadata(opts.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	st.Installed, st.Meta = true, &m
	st.Files = map[string]string{}
	for _, f := range m.Files {
		sum, err := fileSHA256(opts.at(f.Path))
		switch {
		case err != nil:
			st.Files[f.Path] = "missing"
		case sum != f.SHA256:
			st.Files[f.Path] = "changed"
		default:
			st.Files[f.Path] = "ok"
		}
	}
	st.Units = map[string]string{}
	for _, u := range m.Units {
		st.Units[u] = "not managed (systemd is not running)"
		if opts.manages() {
			out, _ := exec.CommandContext(ctx, "systemctl", "is-active", u).Output()
			st.Units[u] = strings.TrimSpace(string(out))
		}
	}
	c := &privileged.Client{Socket: opts.at(m.HelperSocket)}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.Ping(pctx); err != nil {
		st.Helper = err.Error()
	} else {
		st.Helper = "reachable"
	}
	return st, nil
}
