package netfilter

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
)

// Proto is a transport protocol a port can be published for.
type Proto string

// The protocols a port can be published for.
const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// icmp is only used by the base rules (ping of the gateway); it cannot be
// published.
const icmp Proto = "icmp"

// Valid reports whether p is TCP or UDP.
func (p Proto) Valid() bool { return p == TCP || p == UDP }

// number is the IP protocol number of p.
func (p Proto) number() byte {
	switch p {
	case UDP:
		return 17
	case icmp:
		return 1
	}
	return 6
}

// PortMapping is one published port: traffic to HostIP:HostPort on the host
// is forwarded to the VM's address on GuestPort.
type PortMapping struct {
	// HostIP is the host address the port is published on. The zero Addr
	// means every local address of the host (including 127.0.0.1).
	HostIP netip.Addr
	// HostPort is the port on the host, 1-65535.
	HostPort uint16
	// GuestPort is the port in the guest, 1-65535.
	GuestPort uint16
	// Proto is TCP or UDP.
	Proto Proto
}

// ErrInvalidPublish is wrapped by every error of ParsePublish and
// PortMapping.Validate.
var ErrInvalidPublish = errors.New("invalid port publish spec")

// ErrPortInUse is wrapped by CheckHostPortFree's error when something on the
// host already listens on the port.
var ErrPortInUse = errors.New("host port in use")

// ParsePublish parses a `-p` spec: [hostip:]hostport:guestport[/tcp|udp].
// The protocol defaults to tcp; hostip, when given, must be an IPv4 address
// (0.0.0.0 means every local address, as does leaving it out).
//
//	8080:80            every host address, tcp
//	127.0.0.1:8080:80  loopback only
//	5353:53/udp        udp
func ParsePublish(spec string) (PortMapping, error) {
	bad := func(format string, a ...any) (PortMapping, error) {
		return PortMapping{}, fmt.Errorf("%w %q: %s (want [hostip:]hostport:guestport[/tcp|udp])",
			ErrInvalidPublish, spec, fmt.Sprintf(format, a...))
	}
	s := strings.TrimSpace(spec)
	if s == "" {
		return bad("empty")
	}
	pm := PortMapping{Proto: TCP}
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		proto := Proto(strings.ToLower(s[i+1:]))
		if !proto.Valid() {
			return bad("protocol %q is not tcp or udp", s[i+1:])
		}
		pm.Proto = proto
		s = s[:i]
	}
	if strings.HasPrefix(s, "[") {
		return bad("IPv6 host addresses are not supported")
	}
	parts := strings.Split(s, ":")
	switch len(parts) {
	case 2:
	case 3:
		if parts[0] == "" {
			return bad("empty host address")
		}
		ip, err := netip.ParseAddr(parts[0])
		if err != nil {
			return bad("host address %q is not an IP address", parts[0])
		}
		if !ip.Is4() {
			return bad("host address %s is not IPv4", ip)
		}
		if !ip.IsUnspecified() {
			pm.HostIP = ip
		}
	case 1:
		return bad("missing guest port")
	default:
		return bad("too many ':' separated fields")
	}
	n := len(parts)
	var err error
	if pm.HostPort, err = parsePort(parts[n-2]); err != nil {
		return bad("host port: %v", err)
	}
	if pm.GuestPort, err = parsePort(parts[n-1]); err != nil {
		return bad("guest port: %v", err)
	}
	return pm, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("empty")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a number", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%s is out of range 1-65535", s)
	}
	return uint16(n), nil
}

// Validate checks the ports, the protocol and that HostIP, when set, is IPv4.
func (p PortMapping) Validate() error {
	switch {
	case !p.Proto.Valid():
		return fmt.Errorf("%w %s: protocol %q is not tcp or udp", ErrInvalidPublish, p, p.Proto)
	case p.HostPort == 0 || p.GuestPort == 0:
		return fmt.Errorf("%w %s: ports must be 1-65535", ErrInvalidPublish, p)
	case p.HostIP.IsValid() && (!p.HostIP.Is4() || p.HostIP.IsUnspecified()):
		return fmt.Errorf("%w %s: host address must be a specific IPv4 address or unset", ErrInvalidPublish, p)
	}
	return nil
}

// String returns the canonical spec, e.g. "127.0.0.1:8080:80/tcp" or
// "8080:80/udp"; ParsePublish(p.String()) == p.
func (p PortMapping) String() string {
	s := fmt.Sprintf("%d:%d/%s", p.HostPort, p.GuestPort, p.Proto)
	if p.HostIP.IsValid() {
		s = p.HostIP.String() + ":" + s
	}
	return s
}

// hostAddr is "ip:port/proto" of the host side, "0.0.0.0" for every address.
func (p PortMapping) hostAddr() string {
	ip := "0.0.0.0"
	if p.HostIP.IsValid() {
		ip = p.HostIP.String()
	}
	return fmt.Sprintf("%s:%d/%s", ip, p.HostPort, p.Proto)
}

// coversLoopback reports whether the mapping is reachable on 127.0.0.1 (it
// is bound to a loopback address or to every address).
func (p PortMapping) coversLoopback() bool {
	return !p.HostIP.IsValid() || p.HostIP.IsLoopback()
}

// overlaps reports whether p and q claim the same host port: same protocol
// and port, and the same address or either on every address.
// Overlaps reports whether p and q would claim the same host port.
func (p PortMapping) Overlaps(q PortMapping) bool { return p.overlaps(q) }

func (p PortMapping) overlaps(q PortMapping) bool {
	if p.Proto != q.Proto || p.HostPort != q.HostPort {
		return false
	}
	return !p.HostIP.IsValid() || !q.HostIP.IsValid() || p.HostIP == q.HostIP
}

// CheckHostPortFree tries to bind the host side of p (in the calling
// thread's network namespace) and releases it at once. An error wrapping
// ErrPortInUse means another program already has the port; the published
// port would shadow it (DNAT happens before the socket lookup), so the
// caller should refuse. Binding an address the host does not have is
// reported as such.
func CheckHostPortFree(p PortMapping) error {
	if err := p.Validate(); err != nil {
		return err
	}
	ip := "0.0.0.0"
	if p.HostIP.IsValid() {
		ip = p.HostIP.String()
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(int(p.HostPort)))
	var err error
	if p.Proto == UDP {
		var c net.PacketConn
		if c, err = net.ListenPacket("udp4", addr); err == nil {
			return c.Close()
		}
	} else {
		var l net.Listener
		if l, err = net.Listen("tcp4", addr); err == nil {
			return l.Close()
		}
	}
	if isAddrInUse(err) {
		return fmt.Errorf("%w: cannot publish %s: %s/%s is already in use on the host (pick another host port)",
			ErrPortInUse, p, addr, p.Proto)
	}
	return fmt.Errorf("cannot publish %s: binding %s/%s on the host failed: %w", p, addr, p.Proto, err)
}

func isAddrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }
