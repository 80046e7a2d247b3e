package dnsserver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// TestListenHook: sockets opened by Options.Listen (as the root helper
// does for port 53) are served; a nil answer lets the server bind; an
// error fails Start naming the address.
func TestListenHook(t *testing.T) {
	var asked []netip.AddrPort
	opts := Options{Logger: testLogger(t), ResolvConf: writeResolvConf(t, ""),
		Listen: func(ctx context.Context, ap netip.AddrPort) (net.PacketConn, net.Listener, error) {
			asked = append(asked, ap)
			switch ap.Port() {
			case 53: // stands in for the helper: open elsewhere, hand back
				return Bind(ctx, netip.MustParseAddrPort("127.0.0.1:0"), false)
			case 1:
				return nil, nil, errors.New("refused by the root helper")
			}
			return nil, nil, nil
		}}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Start(context.Background(), []string{"127.0.0.1:53", "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	if len(asked) != 2 {
		t.Fatalf("hook asked for %v", asked)
	}
	if err := s.Set("web", mustAddr("10.213.0.5")); err != nil {
		t.Fatal(err)
	}
	for _, a := range s.Addrs() {
		if a.Port() == 53 || a.Port() == 0 {
			t.Fatalf("Addrs %v: want the ports actually bound", s.Addrs())
		}
		for _, network := range []string{"udp", "tcp"} {
			wantA(t, ask(t, a.String(), network, "web.vm.", dns.TypeA, 0), "10.213.0.5")
		}
	}

	s2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	err = s2.Start(context.Background(), []string{"127.0.0.1:1"})
	var be *BindError
	if !errors.As(err, &be) || !strings.Contains(err.Error(), "refused by the root helper") {
		t.Fatalf("hook error: %v", err)
	}
}
