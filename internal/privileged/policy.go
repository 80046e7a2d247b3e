package privileged

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"banger/internal/hostnet"
	"banger/internal/netfilter"
)

// DefaultPolicyFile is where `banger system install` writes the helper's policy.
const DefaultPolicyFile = "/etc/banger/root-helper.json"

// DefaultSocket is the helper's socket when the policy names none.
const DefaultSocket = "/run/banger-root/helper.sock"

// Policy is the root helper's configuration: who may call it and what its
// operations may touch. It is written by `banger system install` into a
// root-owned file; nothing in a request can widen it.
type Policy struct {
	// OwnerUID is the only uid allowed to connect (SO_PEERCRED), and the
	// owner given to the taps the helper creates.
	OwnerUID int `json:"owner_uid"`
	// Socket is the helper's Unix socket path.
	Socket string `json:"socket"`
	// ManagedDirs are the directories whose paths requests may name (the
	// owner's state and runtime directories). Absolute, clean, no symlinks.
	ManagedDirs []string `json:"managed_dirs"`
	// Bridge, CIDR and TapPrefix are the daemon's network.
	Bridge    string       `json:"bridge"`
	CIDR      netip.Prefix `json:"cidr"`
	TapPrefix string       `json:"tap_prefix,omitempty"`
	// GuestToGuest is the firewall's guest-to-guest setting.
	GuestToGuest bool `json:"guest_to_guest,omitempty"`
	// VMMBinaries are the absolute paths of the VMM executables the daemon
	// launches; a pid is signalled only if /proc/PID/exe is one of them.
	VMMBinaries []string `json:"vmm_binaries"`
}

// LoadPolicy reads and validates a policy file.
func LoadPolicy(path string) (Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Policy{}, fmt.Errorf("read helper policy: %w (run `banger system install`)", err)
	}
	var p Policy
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("helper policy %s: %w", path, err)
	}
	if err := p.Validate(); err != nil {
		return Policy{}, fmt.Errorf("helper policy %s: %w", path, err)
	}
	return p, nil
}

// Write stores the policy as JSON (mode 0644: it holds no secret, and the
// daemon's doctor reads it).
func (p Policy) Write(path string) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func (p Policy) tapPrefix() string {
	if p.TapPrefix == "" {
		return hostnet.DefaultTapPrefix
	}
	return p.TapPrefix
}

// SocketPath is the helper's socket (DefaultSocket when unset).
func (p Policy) SocketPath() string {
	if p.Socket == "" {
		return DefaultSocket
	}
	return p.Socket
}

// NetConfig is the network the policy allows.
func (p Policy) NetConfig() hostnet.Config {
	return hostnet.Config{Bridge: p.Bridge, CIDR: p.CIDR, TapPrefix: p.tapPrefix()}
}

// Validate checks the policy itself.
func (p Policy) Validate() error {
	var errs []error
	if p.OwnerUID < 0 {
		errs = append(errs, fmt.Errorf("owner_uid %d: must be a uid (0 or more)", p.OwnerUID))
	}
	if err := p.NetConfig().Validate(); err != nil {
		errs = append(errs, err)
	}
	if s := p.SocketPath(); !filepath.IsAbs(s) || filepath.Clean(s) != s {
		errs = append(errs, fmt.Errorf("socket %q: must be an absolute, clean path", s))
	}
	if len(p.ManagedDirs) == 0 {
		errs = append(errs, errors.New("managed_dirs: empty; list the owner's banger state and runtime directories"))
	}
	for _, d := range p.ManagedDirs {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d || d == "/" {
			errs = append(errs, fmt.Errorf("managed_dirs: %q must be an absolute, clean path other than /", d))
		}
	}
	if len(p.VMMBinaries) == 0 {
		errs = append(errs, errors.New("vmm_binaries: empty; list the absolute path of qemu-system-x86_64 (and firecracker)"))
	}
	for _, b := range p.VMMBinaries {
		if !filepath.IsAbs(b) || filepath.Clean(b) != b {
			errs = append(errs, fmt.Errorf("vmm_binaries: %q must be an absolute, clean path", b))
		}
	}
	return errors.Join(errs...)
}

// FirewallConfig is the nftables policy of the helper's firewall.
func (p Policy) FirewallConfig() netfilter.Config {
	return netfilter.Config{Bridge: p.Bridge, CIDR: p.CIDR, TapPrefix: p.tapPrefix(), AllowGuestToGuest: p.GuestToGuest}
}
