package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// BindError is a failure to listen on one address, with the likely cause.
type BindError struct {
	Network string         // "udp" or "tcp"
	Addr    netip.AddrPort // the address asked for
	Err     error
}

func (e *BindError) Error() string {
	msg := fmt.Sprintf("dnsserver: cannot listen on %s %s: %v", e.Network, e.Addr, e.Err)
	if hint := bindHint(e.Err, e.Addr); hint != "" {
		msg += " (" + hint + ")"
	}
	return msg
}

func (e *BindError) Unwrap() error { return e.Err }

func bindHint(err error, ap netip.AddrPort) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Sprintf("port %d is in use: another DNS server (systemd-resolved, dnsmasq, avahi-daemon on 5353, or another bangerd) holds it; stop it or choose another address", ap.Port())
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Sprintf("%s is not an address of this host: is the bridge up and does it carry this address?", ap.Addr())
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Sprintf("port %d is privileged: binding it needs root or CAP_NET_BIND_SERVICE", ap.Port())
	}
	return ""
}

// parseListenAddr accepts "IP:port" ("[v6]:port") with a concrete IP.
func parseListenAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dnsserver: listen address %q: want IP:port (for example %s)", s, DefaultHostAddr)
	}
	if ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("dnsserver: listen address %q: a wildcard address would answer anyone who can reach the host; give the loopback and bridge addresses instead", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// Bind opens the UDP socket and TCP listener of addr as the server would
// (with IP_FREEBIND when freebind is set): the root helper uses it to open
// port 53 on the bridge address for an unprivileged daemon.
func Bind(ctx context.Context, addr netip.AddrPort, freebind bool) (net.PacketConn, net.Listener, error) {
	pc, ln, _, err := bind(ctx, addr, freebind)
	return pc, ln, err
}

// bind opens the UDP socket and the TCP listener of one address, on the
// same port. With port 0 the UDP socket picks the port and the TCP listener
// follows it (retrying with a new port if TCP's is taken).
func bind(ctx context.Context, ap netip.AddrPort, freebind bool) (net.PacketConn, net.Listener, netip.AddrPort, error) {
	lc := net.ListenConfig{}
	if freebind {
		lc.Control = controlFreeBind
	}
	for attempt := 0; ; attempt++ {
		pc, err := lc.ListenPacket(ctx, "udp", ap.String())
		if err != nil {
			return nil, nil, ap, &BindError{Network: "udp", Addr: ap, Err: err}
		}
		ua := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		bound := netip.AddrPortFrom(ua.Addr().Unmap().WithZone(ap.Addr().Zone()), ua.Port())
		ln, err := lc.Listen(ctx, "tcp", bound.String())
		if err != nil {
			pc.Close()
			if ap.Port() == 0 && errors.Is(err, syscall.EADDRINUSE) && attempt < 10 {
				continue
			}
			return nil, nil, ap, &BindError{Network: "tcp", Addr: bound, Err: err}
		}
		return pc, ln, bound, nil
	}
}
