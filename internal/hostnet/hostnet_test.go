package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	good := []string{"b", "br0", "banger0", "bg_tap-1", "A23456789012345", "0"}
	bad := []string{"", "-br", "1234567890123456", "br 0", "br.0", "br/0", "tap%d", "ü", "br:0"}
	for _, n := range good {
		if err := ValidateName("bridge", n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range bad {
		err := ValidateName("tap", n)
		if err == nil {
			t.Errorf("ValidateName(%q) = nil, want error", n)
		} else if !strings.Contains(err.Error(), "invalid tap name") {
			t.Errorf("ValidateName(%q) error %q does not name the kind", n, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	cidr := netip.MustParsePrefix("172.31.0.0/24")
	ok := []Config{
		{Bridge: "banger0", CIDR: cidr},
		{Bridge: "banger0", CIDR: cidr, TapPrefix: "vm"},
		{Bridge: "banger0", CIDR: netip.MustParsePrefix("10.200.0.0/30")},
		{Bridge: "banger0", CIDR: netip.MustParsePrefix("172.31.0.7/24")}, // masked when used
	}
	for _, c := range ok {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: Validate() = %v", c, err)
		}
	}
	bad := []struct {
		c    Config
		want string
	}{
		{Config{Bridge: "", CIDR: cidr}, "bridge name"},
		{Config{Bridge: "-x", CIDR: cidr}, "bridge name"},
		{Config{Bridge: "banger0"}, "network.cidr"},
		{Config{Bridge: "banger0", CIDR: netip.MustParsePrefix("fd00::/64")}, "IPv4"},
		{Config{Bridge: "banger0", CIDR: netip.MustParsePrefix("10.0.0.0/31")}, "too small"},
		{Config{Bridge: "banger0", CIDR: cidr, TapPrefix: "toolong1"}, "tap prefix"},
		{Config{Bridge: "banger0", CIDR: cidr, TapPrefix: "a.b"}, "tap prefix"},
		{Config{Bridge: "bgtap0", CIDR: cidr}, "tap prefix"},
	}
	for _, b := range bad {
		err := b.c.Validate()
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%+v: Validate() = %v, want error containing %q", b.c, err, b.want)
		}
	}
}

func TestGateway(t *testing.T) {
	for in, want := range map[string]string{
		"172.31.0.0/24": "172.31.0.1",
		"172.31.0.9/24": "172.31.0.1",
		"10.0.0.0/8":    "10.0.0.1",
		"10.9.8.4/30":   "10.9.8.5",
	} {
		if got := Gateway(netip.MustParsePrefix(in)); got != netip.MustParseAddr(want) {
			t.Errorf("Gateway(%s) = %s, want %s", in, got, want)
		}
	}
	if got := Gateway(netip.Prefix{}); got.IsValid() {
		t.Errorf("Gateway(zero) = %s, want invalid", got)
	}
	c := Config{CIDR: netip.MustParsePrefix("192.168.77.0/24")}
	if got := c.Gateway(); got != netip.MustParseAddr("192.168.77.1") {
		t.Errorf("Config.Gateway() = %s", got)
	}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestAllocate(t *testing.T) {
	tests := []struct {
		name string
		cidr string
		used []netip.Addr
		want string // "" means exhausted
	}{
		{"empty /24 skips network and gateway", "172.31.0.0/24", nil, "172.31.0.2"},
		{"unmasked prefix", "172.31.0.77/24", nil, "172.31.0.2"},
		{"lowest free", "172.31.0.0/24", addrs("172.31.0.2", "172.31.0.3", "172.31.0.5"), "172.31.0.4"},
		{"unordered used", "172.31.0.0/24", addrs("172.31.0.3", "172.31.0.2"), "172.31.0.4"},
		{"used outside range ignored", "172.31.0.0/24", addrs("10.0.0.2", "172.31.1.2"), "172.31.0.2"},
		{"ipv4-mapped used", "172.31.0.0/24", addrs("::ffff:172.31.0.2"), "172.31.0.3"},
		{"used gateway and network harmless", "172.31.0.0/24", addrs("172.31.0.0", "172.31.0.1"), "172.31.0.2"},
		{"last before broadcast", "172.31.0.0/24", rangeAddrs("172.31.0.2", 252), "172.31.0.254"},
		{"/24 exhausted, broadcast never given", "172.31.0.0/24", rangeAddrs("172.31.0.2", 253), ""},
		{"/30 has one guest", "10.9.8.4/30", nil, "10.9.8.6"},
		{"/30 exhausted", "10.9.8.4/30", addrs("10.9.8.6"), ""},
		{"/16 crosses octet", "10.1.0.0/16", rangeAddrs("10.1.0.2", 254), "10.1.1.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := netip.MustParsePrefix(tc.cidr)
			got, err := Allocate(p, tc.used)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("Allocate = %s, want exhaustion error", got)
				}
				if !errors.Is(err, ErrNoFreeAddress) {
					t.Errorf("error %v does not wrap ErrNoFreeAddress", err)
				}
				want := fmt.Sprintf("no free address in %s; delete VMs or widen network.cidr", p.Masked())
				if err.Error() != want {
					t.Errorf("error = %q, want %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			if got != netip.MustParseAddr(tc.want) {
				t.Errorf("Allocate = %s, want %s", got, tc.want)
			}
		})
	}
	if _, err := Allocate(netip.MustParsePrefix("fd00::/64"), nil); err == nil {
		t.Error("Allocate on IPv6 prefix: want error")
	}
	if _, err := Allocate(netip.Prefix{}, nil); err == nil {
		t.Error("Allocate on zero prefix: want error")
	}
}

func TestAllocateExhaustionMessage(t *testing.T) {
	_, err := Allocate(netip.MustParsePrefix("172.31.0.0/24"), rangeAddrs("172.31.0.2", 253))
	const want = "no free address in 172.31.0.0/24; delete VMs or widen network.cidr"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

// rangeAddrs returns n consecutive addresses starting at first.
func rangeAddrs(first string, n int) []netip.Addr {
	a := netip.MustParseAddr(first)
	out := make([]netip.Addr, 0, n)
	for range n {
		out = append(out, a)
		a = a.Next()
	}
	return out
}

func TestTapName(t *testing.T) {
	ids := []string{"", "a", "vm-1", "vm-2", "0123456789abcdef0123456789abcdef", strings.Repeat("x", 500)}
	seen := map[string]string{}
	for _, id := range ids {
		n := TapName(id)
		if n != TapName(id) {
			t.Errorf("TapName(%q) not deterministic", id)
		}
		if len(n) != 15 || !strings.HasPrefix(n, DefaultTapPrefix) {
			t.Errorf("TapName(%q) = %q, want 15 chars starting with %q", id, n, DefaultTapPrefix)
		}
		if err := ValidateName("tap", n); err != nil {
			t.Errorf("TapName(%q) = %q: %v", id, n, err)
		}
		if prev, dup := seen[n]; dup {
			t.Errorf("TapName(%q) == TapName(%q) == %q", id, prev, n)
		}
		seen[n] = id
	}
	if got, want := (Config{}).TapName("vm-1"), TapName("vm-1"); got != want {
		t.Errorf("Config{}.TapName = %q, want default %q", got, want)
	}
	c := Config{TapPrefix: "vm"}
	n := c.TapName("vm-1")
	if len(n) != 15 || !strings.HasPrefix(n, "vm") || ValidateName("tap", n) != nil {
		t.Errorf("Config{TapPrefix: vm}.TapName = %q", n)
	}
	if n == c.TapName("vm-2") {
		t.Errorf("different ids give the same tap name %q", n)
	}
}

func TestMAC(t *testing.T) {
	seen := map[string]bool{}
	for _, id := range []string{"", "a", "vm-1", "vm-2", "vm-3"} {
		m := MAC(id)
		if m != MAC(id) {
			t.Errorf("MAC(%q) not deterministic", id)
		}
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 || len(m) != 17 {
			t.Fatalf("MAC(%q) = %q: not a 48-bit MAC (%v)", id, m, err)
		}
		if m != strings.ToLower(m) {
			t.Errorf("MAC(%q) = %q: want lower case", id, m)
		}
		if hw[0]&0x01 != 0 {
			t.Errorf("MAC(%q) = %q is multicast", id, m)
		}
		if hw[0]&0x02 == 0 {
			t.Errorf("MAC(%q) = %q is not locally administered", id, m)
		}
		if seen[m] {
			t.Errorf("MAC(%q) = %q repeats", id, m)
		}
		seen[m] = true
	}
	if b := bridgeMAC("banger0"); b[0]&0x03 != 0x02 || b.String() == MAC("banger0") {
		t.Errorf("bridgeMAC = %s: want local unicast, distinct from guest MACs", b)
	}
}
