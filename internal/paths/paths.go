// Package paths resolves where banger keeps its files.
//
// A user install follows the XDG base directories:
//
//	config  $XDG_CONFIG_HOME/banger   (~/.config/banger)      config.toml
//	state   $XDG_STATE_HOME/banger    (~/.local/state/banger) banger.db, vms/, images/, ssh/, bangerd.log
//	cache   $XDG_CACHE_HOME/banger    (~/.cache/banger)
//	run     $XDG_RUNTIME_DIR/banger, else <state>/run         bangerd.sock
//
// A system service (BANGER_SYSTEM=1 or bangerd --system) uses /etc/banger,
// /var/lib/banger, /var/cache/banger and /run/banger. So does the owner
// named by `banger system install` (InstallMetadataFile), whose CLI then
// talks to the system daemon; BANGER_SYSTEM=0 opts out.
package paths

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Layout is the set of directories and well-known files of one installation.
type Layout struct {
	System    bool
	ConfigDir string
	StateDir  string
	CacheDir  string
	RunDir    string
}

// InstallMetadataFile is where `banger system install` records the install
// (internal/sysinstall); Resolve reads its owner_uid.
const InstallMetadataFile = "/etc/banger/install.json"

// installMetadata is InstallMetadataFile (tests point it elsewhere).
var installMetadata = InstallMetadataFile

// installedOwner reports whether a system install names uid as its owner.
func installedOwner(uid int) bool {
	b, err := os.ReadFile(installMetadata)
	if err != nil {
		return false
	}
	var m struct {
		OwnerUID *int `json:"owner_uid"`
	}
	return json.Unmarshal(b, &m) == nil && m.OwnerUID != nil && *m.OwnerUID == uid
}

// Resolve returns the layout for the current user or, when system is true
// (or BANGER_SYSTEM=1, or the user is the installed owner), for the system
// service.
func Resolve(system bool) (Layout, error) {
	env := os.Getenv("BANGER_SYSTEM")
	if system || env == "1" || (env != "0" && installedOwner(os.Getuid())) {
		return Layout{System: true, ConfigDir: "/etc/banger", StateDir: "/var/lib/banger",
			CacheDir: "/var/cache/banger", RunDir: "/run/banger"}, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return Layout{}, fmt.Errorf("cannot find the home directory: %w (set HOME)", err)
	}
	xdg := func(env, def string) string {
		if v := os.Getenv(env); v != "" && filepath.IsAbs(v) {
			return filepath.Join(v, "banger")
		}
		return filepath.Join(home, def, "banger")
	}
	l := Layout{
		ConfigDir: xdg("XDG_CONFIG_HOME", ".config"),
		StateDir:  xdg("XDG_STATE_HOME", filepath.Join(".local", "state")),
		CacheDir:  xdg("XDG_CACHE_HOME", ".cache"),
	}
	if v := os.Getenv("XDG_RUNTIME_DIR"); v != "" && filepath.IsAbs(v) {
		l.RunDir = filepath.Join(v, "banger")
	} else {
		l.RunDir = filepath.Join(l.StateDir, "run")
	}
	return l, nil
}

func (l Layout) ConfigFile() string { return filepath.Join(l.ConfigDir, "config.toml") }
func (l Layout) Socket() string     { return filepath.Join(l.RunDir, "bangerd.sock") }
func (l Layout) PIDFile() string    { return filepath.Join(l.RunDir, "bangerd.pid") }
func (l Layout) Database() string   { return filepath.Join(l.StateDir, "banger.db") }
func (l Layout) DaemonLog() string  { return filepath.Join(l.StateDir, "bangerd.log") }
func (l Layout) VMsDir() string     { return filepath.Join(l.StateDir, "vms") }
func (l Layout) ImagesDir() string  { return filepath.Join(l.StateDir, "images") }
func (l Layout) KernelsDir() string { return filepath.Join(l.StateDir, "kernels") }
func (l Layout) SSHDir() string     { return filepath.Join(l.StateDir, "ssh") }
func (l Layout) SSHKey() string     { return filepath.Join(l.SSHDir(), "id_ed25519") }
func (l Layout) KnownHosts() string { return filepath.Join(l.SSHDir(), "known_hosts") }

// VMDir is the directory holding one VM's disks, console log and sockets.
func (l Layout) VMDir(id string) string { return filepath.Join(l.VMsDir(), id) }

// Ensure creates the directories with private permissions.
func (l Layout) Ensure() error {
	for _, d := range []string{l.ConfigDir, l.StateDir, l.CacheDir, l.RunDir, l.VMsDir(), l.ImagesDir(), l.SSHDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	return nil
}
