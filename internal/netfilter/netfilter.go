package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"banger/internal/hostnet"
)

// DefaultTable is the name of banger's tables when Config.Table is empty.
const DefaultTable = "banger"

// HostPort is a port on the bridge address that guests may reach besides
// DNS (53/udp and 53/tcp, always open).
type HostPort struct {
	Port  uint16
	Proto Proto
}

func (h HostPort) String() string { return fmt.Sprintf("%d/%s", h.Port, h.Proto) }

// Config is the daemon-wide firewall policy.
type Config struct {
	// Table names banger's two tables (`table inet NAME` and
	// `table bridge NAME`); DefaultTable when empty.
	Table string
	// Bridge is the host bridge the VM taps are attached to.
	Bridge string
	// CIDR is the guests' IPv4 network; its first host address is the
	// bridge (gateway) address.
	CIDR netip.Prefix
	// TapPrefix is the name prefix of the VM taps (hostnet's
	// DefaultTapPrefix when empty). Guest-to-guest isolation matches bridge
	// ports by this prefix, so it applies to every VM, applied or not.
	TapPrefix string
	// AllowGuestToGuest lets guests on the bridge reach each other. Off by
	// default: guests only reach the host (DNS and HostPorts), and the
	// outside world when their NAT is on.
	AllowGuestToGuest bool
	// HostPorts are extra ports on the bridge address guests may reach.
	HostPorts []HostPort
}

func (c Config) table() string {
	if c.Table == "" {
		return DefaultTable
	}
	return c.Table
}

func (c Config) tapPrefix() string {
	if c.TapPrefix == "" {
		return hostnet.DefaultTapPrefix
	}
	return c.TapPrefix
}

func (c Config) gateway() netip.Addr { return hostnet.Gateway(c.CIDR) }

// Validate checks the table and interface names, the CIDR and the ports.
func (c Config) Validate() error {
	if err := validateToken("table name", c.table(), 32); err != nil {
		return err
	}
	if err := hostnet.ValidateName("bridge", c.Bridge); err != nil {
		return err
	}
	if err := hostnet.ValidateName("tap prefix", c.tapPrefix()); err != nil {
		return err
	}
	if !c.CIDR.IsValid() || !c.CIDR.Addr().Is4() || c.CIDR.Bits() > 30 {
		return fmt.Errorf("invalid guest network %v: want an IPv4 CIDR of /30 or wider", c.CIDR)
	}
	for _, h := range c.HostPorts {
		if h.Port == 0 || !h.Proto.Valid() {
			return fmt.Errorf("invalid allowed host port %s: want 1-65535 and tcp or udp", h)
		}
	}
	return nil
}

// VMRules is the firewall state of one VM.
type VMRules struct {
	// ID identifies the VM's rules (it is written into every rule's
	// comment): 1-64 characters of [A-Za-z0-9._-].
	ID string
	// Name is informational, written into the comments too; optional,
	// same alphabet as ID.
	Name string
	// IP is the guest's IPv4 address inside Config.CIDR.
	IP netip.Addr
	// Tap is the VM's bridge port. Optional: when set, frames entering
	// the bridge from it must carry IP as their IPv4/ARP source address
	// (so a guest cannot borrow another VM's NAT or replies).
	Tap string
	// NAT masquerades the guest's traffic to non-bridge interfaces. Off:
	// the guest reaches only the host (DNS and allowed ports).
	NAT bool
	// Publish are the guest ports published on the host.
	Publish []PortMapping
}

// validate checks v against the config.
func (v VMRules) validate(c Config) error {
	if err := validateToken("VM id", v.ID, 64); err != nil {
		return err
	}
	if v.Name != "" {
		if err := validateToken("VM name", v.Name, 64); err != nil {
			return err
		}
	}
	p := c.CIDR.Masked()
	switch {
	case !v.IP.Is4():
		return fmt.Errorf("VM %s: address %v is not IPv4", v.ID, v.IP)
	case !p.Contains(v.IP):
		return fmt.Errorf("VM %s: address %s is outside the guest network %s", v.ID, v.IP, p)
	case v.IP == p.Addr() || v.IP == c.gateway() || v.IP == lastAddr(p):
		return fmt.Errorf("VM %s: address %s is the network, gateway or broadcast address of %s", v.ID, v.IP, p)
	}
	if v.Tap != "" {
		if err := hostnet.ValidateName("tap", v.Tap); err != nil {
			return fmt.Errorf("VM %s: %w", v.ID, err)
		}
	}
	for i, pm := range v.Publish {
		if err := pm.Validate(); err != nil {
			return fmt.Errorf("VM %s: %w", v.ID, err)
		}
		for _, q := range v.Publish[:i] {
			if pm.overlaps(q) {
				return fmt.Errorf("VM %s: published ports %s and %s claim the same host port", v.ID, q, pm)
			}
		}
	}
	return nil
}

// needsForwarding reports whether v needs IPv4 forwarding.
func (v VMRules) needsForwarding() bool { return v.NAT || len(v.Publish) > 0 }

// validateDesired checks a whole desired state: every VM valid, ids and
// addresses unique, no host port claimed twice.
func validateDesired(c Config, desired []VMRules) error {
	ids := map[string]bool{}
	ips := map[netip.Addr]string{}
	var errs []error
	for i, v := range desired {
		if err := v.validate(c); err != nil {
			errs = append(errs, err)
			continue
		}
		if ids[v.ID] {
			errs = append(errs, fmt.Errorf("VM %s listed twice", v.ID))
		}
		ids[v.ID] = true
		if other, ok := ips[v.IP]; ok {
			errs = append(errs, fmt.Errorf("VMs %s and %s share the address %s", other, v.ID, v.IP))
		}
		ips[v.IP] = v.ID
		for _, w := range desired[:i] {
			for _, p := range v.Publish {
				for _, q := range w.Publish {
					if p.overlaps(q) {
						errs = append(errs, fmt.Errorf("VMs %s (%s) and %s (%s) claim the same host port", w.ID, q, v.ID, p))
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// validateToken accepts 1-max characters of [A-Za-z0-9._-]: safe inside a
// rule comment, which is split on spaces when read back.
func validateToken(kind, s string, max int) error {
	if s == "" || len(s) > max {
		return fmt.Errorf("invalid %s %q: want 1-%d characters", kind, s, max)
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("invalid %s %q: only letters, digits, '.', '_' and '-'", kind, s)
		}
	}
	return nil
}

// Rule comments. Every rule banger writes carries one, so the table can be
// read back and each rule attributed:
//
//	banger base <what>                     static policy of the config
//	banger vm=<id> [name=<n>] nat          masquerade / forward of a VM
//	banger vm=<id> [name=<n>] publish <spec>  DNAT / forward of a port
//	banger vm=<id> [name=<n>] antispoof    source check on the VM's tap
//	banger state <knob>=<prior>            a sysctl banger changed, and its prior value
const commentPrefix = "banger"

const (
	kindNAT       = "nat"
	kindPublish   = "publish"
	kindAntispoof = "antispoof"
)

// tag is the parsed comment of a per-VM rule.
type tag struct {
	vm, name, kind string
	publish        PortMapping // for kindPublish
}

func (t tag) String() string {
	s := commentPrefix + " vm=" + t.vm
	if t.name != "" {
		s += " name=" + t.name
	}
	s += " " + t.kind
	if t.kind == kindPublish {
		s += " " + t.publish.String()
	}
	return s
}

// parseTag parses a per-VM rule comment; ok is false for anything else.
func parseTag(comment string) (t tag, ok bool) {
	f := strings.Fields(comment)
	if len(f) < 3 || f[0] != commentPrefix || !strings.HasPrefix(f[1], "vm=") {
		return tag{}, false
	}
	t.vm = strings.TrimPrefix(f[1], "vm=")
	f = f[2:]
	if strings.HasPrefix(f[0], "name=") {
		t.name = strings.TrimPrefix(f[0], "name=")
		f = f[1:]
	}
	if len(f) == 0 {
		return tag{}, false
	}
	t.kind = f[0]
	if t.kind == kindPublish {
		if len(f) != 2 {
			return tag{}, false
		}
		pm, err := ParsePublish(f[1])
		if err != nil {
			return tag{}, false
		}
		t.publish = pm
	}
	return t, t.vm != ""
}

func stateComment(knob, prior string) string {
	return commentPrefix + " state " + knob + "=" + prior
}

// parseState parses a state record comment.
func parseState(comment string) (knob, prior string, ok bool) {
	f := strings.Fields(comment)
	if len(f) != 3 || f[0] != commentPrefix || f[1] != "state" {
		return "", "", false
	}
	knob, prior, ok = strings.Cut(f[2], "=")
	return knob, prior, ok && knob != ""
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
