package hostnet

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// DefaultTapPrefix is the tap name prefix used when Config.TapPrefix is empty.
const DefaultTapPrefix = "bgtap"

// MaxTapPrefixLen is the longest tap prefix allowed, so that a tap name keeps
// at least 8 hex digits (32 bits) of the VM id hash within 15 characters.
const MaxTapPrefixLen = 7

// maxIfNameLen is IFNAMSIZ-1: the longest Linux interface name.
const maxIfNameLen = 15

// ErrNoFreeAddress is wrapped by Allocate's error when the range is exhausted.
var ErrNoFreeAddress = errors.New("no free address")

// Config is the host network of the daemon.
type Config struct {
	// Bridge is the name of the host bridge the taps are attached to.
	Bridge string
	// CIDR is the IPv4 range the VMs get static addresses from, e.g.
	// 172.31.0.0/24. Its first host address (x.x.x.1) is the gateway and is
	// assigned to the bridge.
	CIDR netip.Prefix
	// TapPrefix is the prefix of tap names; DefaultTapPrefix ("bgtap") when
	// empty. At most MaxTapPrefixLen characters.
	TapPrefix string
}

// tapPrefix returns the effective tap prefix.
func (c Config) tapPrefix() string {
	if c.TapPrefix == "" {
		return DefaultTapPrefix
	}
	return c.TapPrefix
}

// Validate checks the bridge name, the CIDR and the tap prefix.
func (c Config) Validate() error {
	if err := ValidateName("bridge", c.Bridge); err != nil {
		return err
	}
	if err := validateCIDR(c.CIDR); err != nil {
		return err
	}
	p := c.tapPrefix()
	if len(p) > MaxTapPrefixLen {
		return fmt.Errorf("invalid tap prefix %q: at most %d characters", p, MaxTapPrefixLen)
	}
	if err := ValidateName("tap prefix", p); err != nil {
		return err
	}
	if len(c.Bridge) >= len(p) && c.Bridge[:len(p)] == p {
		return fmt.Errorf("bridge name %q must not start with the tap prefix %q", c.Bridge, p)
	}
	return nil
}

// Gateway returns the gateway address of the configured CIDR.
func (c Config) Gateway() netip.Addr { return Gateway(c.CIDR) }

// TapName returns the tap name of a VM under this config's tap prefix.
func (c Config) TapName(vmID string) string { return tapName(c.tapPrefix(), vmID) }

// ValidateName checks an interface name: 1-15 characters of [a-zA-Z0-9_-],
// not starting with '-'. kind ("bridge", "tap", ...) is used in the error.
func ValidateName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("invalid %s name: empty", kind)
	}
	if len(name) > maxIfNameLen {
		return fmt.Errorf("invalid %s name %q: longer than %d characters", kind, name, maxIfNameLen)
	}
	if name[0] == '-' {
		return fmt.Errorf("invalid %s name %q: must not start with '-'", kind, name)
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '_', b == '-':
		default:
			return fmt.Errorf("invalid %s name %q: only letters, digits, '_' and '-' are allowed", kind, name)
		}
	}
	return nil
}

// TapName returns the tap device name of a VM: DefaultTapPrefix followed by
// hex digits of a SHA-256 of the id, 15 characters in all. The same id always
// gives the same name.
func TapName(vmID string) string { return tapName(DefaultTapPrefix, vmID) }

func tapName(prefix, vmID string) string {
	if len(prefix) > MaxTapPrefixLen {
		prefix = prefix[:MaxTapPrefixLen]
	}
	sum := sha256.Sum256([]byte("banger-tap\x00" + vmID))
	return prefix + hex.EncodeToString(sum[:])[:maxIfNameLen-len(prefix)]
}

// MAC returns the guest MAC address of a VM, "xx:xx:xx:xx:xx:xx": locally
// administered, unicast, derived from the id.
func MAC(vmID string) string { return hashMAC("banger-mac\x00" + vmID).String() }

// hashMAC derives a locally administered unicast MAC from s.
func hashMAC(s string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(s))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02 // clear multicast bit, set locally administered bit
	return mac
}

// bridgeMAC is the fixed MAC given to a bridge at creation. A bridge without
// an explicit MAC takes the lowest MAC of its ports, so the gateway's MAC
// would change as VMs come and go and stale guests' ARP caches.
func bridgeMAC(bridge string) net.HardwareAddr { return hashMAC("banger-bridge\x00" + bridge) }

// validateCIDR checks that p is an IPv4 prefix with room for a gateway and at
// least one guest (/30 or wider).
func validateCIDR(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("invalid network.cidr: not set or not a valid prefix")
	}
	if !p.Addr().Is4() {
		return fmt.Errorf("invalid network.cidr %s: must be an IPv4 prefix", p)
	}
	if p.Bits() > 30 {
		return fmt.Errorf("invalid network.cidr %s: too small, use /30 or wider", p)
	}
	if p.Bits() < 1 {
		return fmt.Errorf("invalid network.cidr %s: too wide", p)
	}
	return nil
}

// Gateway returns the first host address of cidr (x.x.x.1 for a /24), the
// address the bridge carries. It returns the zero Addr for an invalid prefix.
func Gateway(cidr netip.Prefix) netip.Addr {
	if !cidr.IsValid() {
		return netip.Addr{}
	}
	return cidr.Masked().Addr().Next()
}

// broadcast returns the last address of an IPv4 prefix.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (^uint32(0) >> uint(p.Bits()))
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

// Allocate returns the lowest host address of cidr that is not the network
// address, the gateway, the broadcast address or in used. Addresses in used
// outside cidr are ignored. When every address is taken the error wraps
// ErrNoFreeAddress and reads "no free address in 172.31.0.0/24; delete VMs or
// widen network.cidr".
func Allocate(cidr netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	if err := validateCIDR(cidr); err != nil {
		return netip.Addr{}, err
	}
	p := cidr.Masked()
	taken := make(map[netip.Addr]struct{}, len(used))
	for _, u := range used {
		taken[u.Unmap()] = struct{}{}
	}
	last := broadcast(p)
	for a := Gateway(p).Next(); a.IsValid() && a != last; a = a.Next() {
		if _, ok := taken[a]; !ok {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w in %s; delete VMs or widen network.cidr", ErrNoFreeAddress, p)
}
