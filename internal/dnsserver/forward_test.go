package dnsserver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestForwardUDP(t *testing.T) {
	up := startUpstream(t, "192.0.2.10")
	_, addr := startServer(t, Options{Upstreams: []string{up.addr}})
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, addr, network, "example.test.", dns.TypeA, 0)
		wantA(t, r, "192.0.2.10")
		if r.Authoritative {
			t.Errorf("%s: a forwarded answer is marked authoritative", network)
		}
		if got := r.Answer[0].Header().Ttl; got != 300 {
			t.Errorf("%s: forwarded TTL %d, want the upstream's 300", network, got)
		}
		// The rcode comes through unchanged.
		wantRcode(t, ask(t, addr, network, "missing.test.", dns.TypeA, 0), dns.RcodeNameError)
	}
	// The upstream is asked over UDP (the TCP query to us is forwarded over UDP too).
	if u, tc := up.udp.Load(), up.tcp.Load(); u != 4 || tc != 0 {
		t.Errorf("upstream saw %d UDP and %d TCP queries, want 4 and 0", u, tc)
	}
}

// The upstream truncates big.test. over UDP: the server asks again over TCP
// and hands the client all of it, or (over UDP without room) a truncated
// reply that sends the client to TCP.
func TestForwardTruncatedFallsBackToTCP(t *testing.T) {
	up := startUpstream(t, "192.0.2.10")
	_, addr := startServer(t, Options{Upstreams: []string{up.addr}})

	r := ask(t, addr, "udp", "big.test.", dns.TypeTXT, 4096)
	wantRcode(t, r, dns.RcodeSuccess)
	if r.Truncated || len(r.Answer) != bigTXT {
		t.Fatalf("EDNS 4096 over UDP: TC=%v, %d answers, want all %d", r.Truncated, len(r.Answer), bigTXT)
	}
	if u, tc := up.udp.Load(), up.tcp.Load(); u != 1 || tc != 1 {
		t.Fatalf("upstream saw %d UDP and %d TCP queries, want 1 and 1", u, tc)
	}

	// Plain DNS over UDP: 512 bytes, so truncated; the client retries over TCP.
	r = ask(t, addr, "udp", "big.test.", dns.TypeTXT, 0)
	if !r.Truncated || len(r.Answer) >= bigTXT {
		t.Fatalf("512-byte UDP: TC=%v with %d answers, want TC and fewer than %d", r.Truncated, len(r.Answer), bigTXT)
	}
	r = ask(t, addr, "tcp", "big.test.", dns.TypeTXT, 0)
	if r.Truncated || len(r.Answer) != bigTXT {
		t.Fatalf("TCP: TC=%v, %d answers, want all %d", r.Truncated, len(r.Answer), bigTXT)
	}
}

// A dead upstream costs one timeout, then the next one answers.
func TestForwardNextUpstream(t *testing.T) {
	dead := deadUpstream(t)
	up := startUpstream(t, "192.0.2.10")
	const timeout = 250 * time.Millisecond
	_, addr := startServer(t, Options{Upstreams: []string{dead, up.addr}, UpstreamTimeout: timeout})
	start := time.Now()
	r := ask(t, addr, "udp", "example.test.", dns.TypeA, 0)
	took := time.Since(start)
	wantA(t, r, "192.0.2.10")
	if took < timeout || took > timeout+3*time.Second {
		t.Errorf("took %v, want one upstream timeout (%v) and a bit", took, timeout)
	}
}

// SERVFAIL from the first upstream: the second one is asked.
func TestForwardServfailTriesNext(t *testing.T) {
	bad := startUpstream(t, "192.0.2.66")
	bad.failAll.Store(true)
	good := startUpstream(t, "192.0.2.10")
	_, addr := startServer(t, Options{Upstreams: []string{bad.addr, good.addr}})
	wantA(t, ask(t, addr, "udp", "example.test.", dns.TypeA, 0), "192.0.2.10")
	if bad.queries() != 1 || good.queries() != 1 {
		t.Errorf("queries: bad %d, good %d, want 1 and 1", bad.queries(), good.queries())
	}
	// Both failing: the upstream's SERVFAIL comes back.
	good.failAll.Store(true)
	wantRcode(t, ask(t, addr, "udp", "example.test.", dns.TypeA, 0), dns.RcodeServerFailure)
}

// No upstream answers: SERVFAIL, after one timeout per upstream.
func TestForwardAllDead(t *testing.T) {
	const timeout = 200 * time.Millisecond
	_, addr := startServer(t, Options{Upstreams: []string{deadUpstream(t), deadUpstream(t)}, UpstreamTimeout: timeout})
	for _, network := range []string{"udp", "tcp"} {
		start := time.Now()
		r := ask(t, addr, network, "example.test.", dns.TypeA, 0)
		took := time.Since(start)
		wantRcode(t, r, dns.RcodeServerFailure)
		if took < 2*timeout || took > 2*timeout+3*time.Second {
			t.Errorf("%s: SERVFAIL after %v, want about 2×%v", network, took, timeout)
		}
	}
}

func TestForwardNoUpstream(t *testing.T) {
	_, addr := startServer(t, Options{ResolvConf: writeResolvConf(t, "# nothing\nsearch example\n")})
	wantRcode(t, ask(t, addr, "udp", "example.test.", dns.TypeA, 0), dns.RcodeServerFailure)
	_, addr = startServer(t, Options{ResolvConf: filepath.Join(t.TempDir(), "missing")})
	wantRcode(t, ask(t, addr, "udp", "example.test.", dns.TypeA, 0), dns.RcodeServerFailure)
}

// Close aborts a forward in flight instead of waiting out the timeouts.
func TestCloseAbortsForwards(t *testing.T) {
	s, err := New(Options{Upstreams: []string{deadUpstream(t)}, UpstreamTimeout: 30 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background(), []string{"127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0].String()
	done := make(chan error, 1)
	go func() {
		_, err := exchange(addr, "tcp", "example.test.", dns.TypeA, 0)
		done <- err
	}()
	// Wait until the query is being forwarded (it holds a forward slot).
	deadline := time.Now().Add(5 * time.Second)
	for len(s.sem) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the query never reached the forwarder")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Close took %v with a forward in flight", took)
	}
	<-done
}

// loopback53 starts a fake upstream on port 53 of a random 127.53.x.y
// address (resolv.conf has no port syntax).
func loopback53(t *testing.T, ip string) (*fakeUpstream, netip.Addr) {
	t.Helper()
	var lastErr error
	for range 5 {
		a := netip.AddrFrom4([4]byte{127, 53, byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
		u, err := startUpstreamOn(t, netip.AddrPortFrom(a, 53).String(), ip)
		if err == nil {
			return u, a
		}
		lastErr = err
	}
	t.Skipf("no free loopback port 53 for a fake upstream: %v", lastErr)
	return nil, netip.Addr{}
}

// The upstreams come from resolv.conf and follow its changes.
func TestResolvConfUpstreams(t *testing.T) {
	u1, a1 := loopback53(t, "192.0.2.1")
	u2, a2 := loopback53(t, "192.0.2.2")
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	replace := func(content string) {
		tmp := filepath.Join(dir, "resolv.conf.new")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, conf); err != nil {
			t.Fatal(err)
		}
	}
	replace(fmt.Sprintf("# generated\nsearch example\nnameserver %s\noptions edns0\n", a1))
	_, addr := startServer(t, Options{ResolvConf: conf})
	wantA(t, ask(t, addr, "udp", "example.test.", dns.TypeA, 0), "192.0.2.1")

	replace(fmt.Sprintf("nameserver %s\nnameserver %s\n", a2, a1))
	wantA(t, ask(t, addr, "udp", "example.test.", dns.TypeA, 0), "192.0.2.2")
	if u1.queries() != 1 || u2.queries() != 1 {
		t.Errorf("queries: first %d, second %d, want 1 and 1", u1.queries(), u2.queries())
	}
}

// A resolv.conf naming this server's own address is not forwarded to (it
// would loop): the next nameserver answers.
func TestResolvConfSkipsSelf(t *testing.T) {
	u, a := loopback53(t, "192.0.2.1")
	// The server listens on port 53 of another 127.53.x.y address.
	var self netip.Addr
	for {
		self = netip.AddrFrom4([4]byte{127, 53, byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
		if self != a {
			break
		}
	}
	conf := writeResolvConf(t, fmt.Sprintf("nameserver %s\nnameserver %s\n", self, a))
	s, err := New(Options{ResolvConf: conf, Logger: testLogger(t), UpstreamTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background(), []string{netip.AddrPortFrom(self, 53).String()}); err != nil {
		t.Skipf("cannot bind %s:53: %v", self, err)
	}
	t.Cleanup(func() { s.Close() })
	start := time.Now()
	wantA(t, ask(t, netip.AddrPortFrom(self, 53).String(), "udp", "example.test.", dns.TypeA, 0), "192.0.2.1")
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v: did it ask itself?", took)
	}
	if u.queries() != 1 {
		t.Errorf("upstream got %d queries, want 1", u.queries())
	}
}

func TestParseResolvConf(t *testing.T) {
	in := `# comment
; another
nameserver 127.0.0.53
nameserver   10.0.0.1   # trailing comment
nameserver fe80::1%eth0
nameserver ::ffff:192.0.2.7
nameserver not-an-ip
nameserver 0.0.0.0
nameserverx 1.1.1.1
search example.com
options edns0 trust-ad
 nameserver 192.0.2.8
`
	got, bad := parseResolvConf([]byte(in))
	want := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.53:53"),
		netip.MustParseAddrPort("10.0.0.1:53"),
		netip.MustParseAddrPort("[fe80::1%eth0]:53"),
		netip.MustParseAddrPort("192.0.2.7:53"),
		netip.MustParseAddrPort("192.0.2.8:53"),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("servers %v, want %v", got, want)
	}
	if !reflect.DeepEqual(bad, []string{"not-an-ip", "0.0.0.0"}) {
		t.Errorf("bad %v", bad)
	}
}

func TestParseUpstream(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":         "192.0.2.1:53",
		"192.0.2.1:5353":    "192.0.2.1:5353",
		"::1":               "[::1]:53",
		"[::1]:54":          "[::1]:54",
		"fe80::1%eth0":      "[fe80::1%eth0]:53",
		"::ffff:192.0.2.1":  "192.0.2.1:53",
		"[fe80::1%br0]:530": "[fe80::1%br0]:530",
	} {
		got, err := parseUpstream(in)
		if err != nil || got.String() != want {
			t.Errorf("parseUpstream(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}

func TestParseReverse(t *testing.T) {
	for in, want := range map[string]string{
		"5.0.213.10.in-addr.arpa.":      "10.213.0.5",
		"255.255.255.255.in-addr.arpa.": "255.255.255.255",
		"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.": "fd00::1",
		"b.a.9.8.7.6.5.4.3.2.1.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.": "2001:db8::123:4567:89ab",
	} {
		got, ok := parseReverse(in)
		if !ok || got != netip.MustParseAddr(want) {
			t.Errorf("parseReverse(%q) = %v, %v; want %s", in, got, ok, want)
		}
		// And back: miekg's ReverseAddr agrees.
		if r, err := dns.ReverseAddr(want); err != nil || r != in {
			t.Errorf("dns.ReverseAddr(%s) = %q, want %q", want, r, in)
		}
	}
	for _, in := range []string{
		"0.213.10.in-addr.arpa.", "1.5.0.213.10.in-addr.arpa.", "256.0.213.10.in-addr.arpa.",
		"05.0.213.10.in-addr.arpa.", "x.0.213.10.in-addr.arpa.", "-1.0.213.10.in-addr.arpa.",
		"d.f.ip6.arpa.", "example.com.", "in-addr.arpa.",
	} {
		if a, ok := parseReverse(in); ok {
			t.Errorf("parseReverse(%q) = %v, want not an address", in, a)
		}
	}
}

func TestReverseZoneName(t *testing.T) {
	for in, want := range map[string]string{
		"10.213.0.0/24": "0.213.10.in-addr.arpa.",
		"10.213.0.7/24": "0.213.10.in-addr.arpa.",
		"10.213.0.0/22": "213.10.in-addr.arpa.",
		"10.0.0.0/8":    "10.in-addr.arpa.",
		"10.0.0.5/32":   "5.0.0.10.in-addr.arpa.",
		"fd00:1::/32":   "1.0.0.0.0.0.d.f.ip6.arpa.",
		"fd00::/7":      "f.ip6.arpa.",
	} {
		if got := reverseZoneName(netip.MustParsePrefix(in)); got != want {
			t.Errorf("reverseZoneName(%s) = %q, want %q", in, got, want)
		}
	}
}
