package netfilter

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParsePublish(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	good := []struct {
		in   string
		want PortMapping
		str  string
	}{
		{"8080:80", PortMapping{HostPort: 8080, GuestPort: 80, Proto: TCP}, "8080:80/tcp"},
		{"127.0.0.1:18080:80", PortMapping{HostIP: lo, HostPort: 18080, GuestPort: 80, Proto: TCP}, "127.0.0.1:18080:80/tcp"},
		{"5353:53/udp", PortMapping{HostPort: 5353, GuestPort: 53, Proto: UDP}, "5353:53/udp"},
		{"127.0.0.1:1:65535/TCP", PortMapping{HostIP: lo, HostPort: 1, GuestPort: 65535, Proto: TCP}, "127.0.0.1:1:65535/tcp"},
		{"0.0.0.0:80:80", PortMapping{HostPort: 80, GuestPort: 80, Proto: TCP}, "80:80/tcp"},
		{" 8080:80 ", PortMapping{HostPort: 8080, GuestPort: 80, Proto: TCP}, "8080:80/tcp"},
	}
	for _, g := range good {
		got, err := ParsePublish(g.in)
		if err != nil {
			t.Errorf("ParsePublish(%q) = %v", g.in, err)
			continue
		}
		if got != g.want {
			t.Errorf("ParsePublish(%q) = %+v, want %+v", g.in, got, g.want)
		}
		if got.String() != g.str {
			t.Errorf("ParsePublish(%q).String() = %q, want %q", g.in, got.String(), g.str)
		}
		if back, err := ParsePublish(got.String()); err != nil || back != got {
			t.Errorf("round trip of %q: %+v, %v", got.String(), back, err)
		}
	}
	bad := []struct{ in, want string }{
		{"", "empty"},
		{"80", "missing guest port"},
		{"80:", "guest port: empty"},
		{":80", "host port: empty"},
		{"0:80", "out of range"},
		{"65536:80", "out of range"},
		{"80:99999999999", "out of range"},
		{"-1:80", "not a number"},
		{"80:80/sctp", "protocol \"sctp\""},
		{"80:80/", "protocol \"\""},
		{"localhost:80:80", "not an IP address"},
		{"[::1]:80:80", "IPv6"},
		{"::1:80:80", "too many"},
		{"1.2.3.4:5:6:7", "too many"},
		{":80:80", "empty host address"},
		{"80 :80", "not a number"},
		{"+80:80", "not a number"},
	}
	for _, b := range bad {
		_, err := ParsePublish(b.in)
		if err == nil {
			t.Errorf("ParsePublish(%q) = nil error", b.in)
			continue
		}
		if !errors.Is(err, ErrInvalidPublish) || !strings.Contains(err.Error(), b.want) || !strings.Contains(err.Error(), "hostport:guestport") {
			t.Errorf("ParsePublish(%q) error %q: want ErrInvalidPublish mentioning %q and the syntax", b.in, err, b.want)
		}
	}
}

func TestPortMappingOverlaps(t *testing.T) {
	p := func(s string) PortMapping {
		m, err := ParsePublish(s)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	cases := []struct {
		a, b string
		want bool
	}{
		{"80:1", "80:2", true},
		{"127.0.0.1:80:1", "80:2", true},
		{"127.0.0.1:80:1", "127.0.0.1:80:2", true},
		{"127.0.0.1:80:1", "127.0.0.2:80:2", false},
		{"80:1", "81:1", false},
		{"80:1/udp", "80:1/tcp", false},
	}
	for _, c := range cases {
		if got := p(c.a).overlaps(p(c.b)); got != c.want {
			t.Errorf("%s overlaps %s = %v, want %v", c.a, c.b, got, c.want)
		}
		if got := p(c.b).overlaps(p(c.a)); got != c.want {
			t.Errorf("%s overlaps %s = %v, want %v", c.b, c.a, got, c.want)
		}
	}
}

func TestTags(t *testing.T) {
	pm, _ := ParsePublish("127.0.0.1:18080:80")
	for _, tg := range []tag{
		{vm: "abc", kind: kindNAT},
		{vm: "abc", name: "web-1", kind: kindNAT},
		{vm: "a.b_c-d", name: "x", kind: kindPublish, publish: pm},
		{vm: "abc", kind: kindAntispoof},
	} {
		got, ok := parseTag(tg.String())
		if !ok || got != tg {
			t.Errorf("parseTag(%q) = %+v, %v; want %+v", tg.String(), got, ok, tg)
		}
	}
	for _, c := range []string{"", "banger", "banger base guest-dns-udp", "banger vm=", "banger vm=x",
		"banger vm=x name=y", "banger vm=x publish", "banger vm=x publish nonsense", "other vm=x nat",
		"banger state ip_forward=0"} {
		if tg, ok := parseTag(c); ok {
			t.Errorf("parseTag(%q) = %+v, want not a tag", c, tg)
		}
	}
	if k, v, ok := parseState(stateComment("ip_forward", "0")); !ok || k != "ip_forward" || v != "0" {
		t.Errorf("parseState round trip = %q %q %v", k, v, ok)
	}
	if _, _, ok := parseState("banger vm=x nat"); ok {
		t.Error("parseState accepted a VM tag")
	}
}

func TestConfigValidate(t *testing.T) {
	cidr := netip.MustParsePrefix("10.213.0.0/24")
	ok := []Config{
		{Bridge: "banger0", CIDR: cidr},
		{Bridge: "banger0", CIDR: cidr, Table: "banger_test", TapPrefix: "vm", HostPorts: []HostPort{{22, TCP}}},
	}
	for _, c := range ok {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	bad := []struct {
		c    Config
		want string
	}{
		{Config{CIDR: cidr}, "bridge"},
		{Config{Bridge: "banger0"}, "guest network"},
		{Config{Bridge: "banger0", CIDR: netip.MustParsePrefix("fd00::/64")}, "guest network"},
		{Config{Bridge: "banger0", CIDR: netip.MustParsePrefix("10.0.0.0/31")}, "guest network"},
		{Config{Bridge: "banger0", CIDR: cidr, Table: "a b"}, "table name"},
		{Config{Bridge: "banger0", CIDR: cidr, TapPrefix: "a.b"}, "tap prefix"},
		{Config{Bridge: "banger0", CIDR: cidr, HostPorts: []HostPort{{0, TCP}}}, "allowed host port"},
		{Config{Bridge: "banger0", CIDR: cidr, HostPorts: []HostPort{{22, "sctp"}}}, "allowed host port"},
	}
	for _, b := range bad {
		if err := b.c.Validate(); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%+v: Validate() = %v, want error containing %q", b.c, err, b.want)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New(Config{}) = nil error")
	}
}

func TestVMRulesValidate(t *testing.T) {
	c := Config{Bridge: "banger0", CIDR: netip.MustParsePrefix("10.213.0.0/24")}
	ip := netip.MustParseAddr("10.213.0.2")
	p80, _ := ParsePublish("8080:80")
	p80lo, _ := ParsePublish("127.0.0.1:8080:81")
	good := VMRules{ID: "0123456789abcdef", Name: "web", IP: ip, Tap: "bgtap0123abcd", NAT: true, Publish: []PortMapping{p80}}
	if err := good.validate(c); err != nil {
		t.Fatal(err)
	}
	mut := func(f func(*VMRules)) VMRules { v := good; f(&v); return v }
	bad := []struct {
		v    VMRules
		want string
	}{
		{mut(func(v *VMRules) { v.ID = "" }), "VM id"},
		{mut(func(v *VMRules) { v.ID = "has space" }), "VM id"},
		{mut(func(v *VMRules) { v.ID = strings.Repeat("a", 65) }), "VM id"},
		{mut(func(v *VMRules) { v.Name = "x\"y" }), "VM name"},
		{mut(func(v *VMRules) { v.IP = netip.Addr{} }), "not IPv4"},
		{mut(func(v *VMRules) { v.IP = netip.MustParseAddr("fd00::2") }), "not IPv4"},
		{mut(func(v *VMRules) { v.IP = netip.MustParseAddr("10.214.0.2") }), "outside"},
		{mut(func(v *VMRules) { v.IP = netip.MustParseAddr("10.213.0.1") }), "gateway"},
		{mut(func(v *VMRules) { v.IP = netip.MustParseAddr("10.213.0.0") }), "network"},
		{mut(func(v *VMRules) { v.IP = netip.MustParseAddr("10.213.0.255") }), "broadcast"},
		{mut(func(v *VMRules) { v.Tap = "much-too-long-name" }), "tap"},
		{mut(func(v *VMRules) { v.Publish = []PortMapping{p80, p80lo} }), "same host port"},
		{mut(func(v *VMRules) { v.Publish = []PortMapping{{HostPort: 1, GuestPort: 1}} }), "protocol"},
	}
	for _, b := range bad {
		if err := b.v.validate(c); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%+v: validate = %v, want error containing %q", b.v, err, b.want)
		}
	}
	other := mut(func(v *VMRules) { v.ID = "other"; v.IP = netip.MustParseAddr("10.213.0.3") })
	if err := validateDesired(c, []VMRules{good, other}); err == nil || !strings.Contains(err.Error(), "same host port") {
		t.Errorf("validateDesired with a shared host port = %v", err)
	}
	other.Publish = nil
	if err := validateDesired(c, []VMRules{good, other}); err != nil {
		t.Errorf("validateDesired = %v", err)
	}
	if err := validateDesired(c, []VMRules{good, good}); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Errorf("validateDesired with a duplicate = %v", err)
	}
}
