package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/miekg/dns"
)

func TestAnswersA(t *testing.T) {
	up := startUpstream(t, "192.0.2.10")
	s, addr := startServer(t, Options{Upstreams: []string{up.addr}})
	if err := s.Set("web", mustAddr("10.213.0.5")); err != nil {
		t.Fatal(err)
	}
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, addr, network, "web.vm.", dns.TypeA, 0)
		wantA(t, r, "10.213.0.5")
		if !r.Authoritative || !r.RecursionAvailable {
			t.Errorf("%s: AA=%v RA=%v, want both", network, r.Authoritative, r.RecursionAvailable)
		}
		if h := r.Answer[0].Header(); h.Ttl != 5 || h.Name != "web.vm." {
			t.Errorf("%s: answer header %v, want web.vm. TTL 5", network, h)
		}
	}
	// With EDNS the reply carries an OPT record too.
	r := ask(t, addr, "udp", "web.vm.", dns.TypeA, 4096)
	wantA(t, r, "10.213.0.5")
	if r.IsEdns0() == nil {
		t.Error("EDNS query answered without OPT")
	}
	if n := up.queries(); n != 0 {
		t.Errorf("upstream got %d queries for .vm names, want 0", n)
	}
}

func TestCaseInsensitive(t *testing.T) {
	s, addr := startServer(t, Options{})
	if err := s.Set("MixedCase", mustAddr("10.213.0.7")); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"mixedcase.vm.", "MIXEDCASE.VM.", "mIxEdCaSe.Vm."} {
		r := ask(t, addr, "udp", q, dns.TypeA, 0)
		wantA(t, r, "10.213.0.7")
		if got := r.Answer[0].Header().Name; got != q {
			t.Errorf("answer owner %q, want the question's spelling %q", got, q)
		}
	}
	if _, ok := s.Records()["mixedcase"]; !ok {
		t.Errorf("records %v: want the lowercased name", s.Records())
	}
	s.Remove("MIXEDCASE")
	wantRcode(t, ask(t, addr, "udp", "mixedcase.vm.", dns.TypeA, 0), dns.RcodeNameError)
}

func TestNXDomainNeverForwarded(t *testing.T) {
	up := startUpstream(t, "192.0.2.10")
	s, addr := startServer(t, Options{Upstreams: []string{up.addr}})
	if err := s.Set("web", mustAddr("10.213.0.5")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"unknown.vm.", "a.web.vm.", "x.y.z.vm."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX} {
			r := ask(t, addr, "udp", name, qt, 0)
			wantRcode(t, r, dns.RcodeNameError)
			if !r.Authoritative || len(r.Answer) != 0 {
				t.Errorf("%s: AA=%v answers=%d", name, r.Authoritative, len(r.Answer))
			}
			if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA || r.Ns[0].Header().Name != "vm." {
				t.Errorf("%s: authority %v, want the vm. SOA", name, r.Ns)
			}
		}
	}
	if n := up.queries(); n != 0 {
		t.Errorf("upstream got %d queries for .vm names, want 0", n)
	}
}

func TestNoData(t *testing.T) {
	s, addr := startServer(t, Options{})
	if err := s.Set("web", mustAddr("10.213.0.5")); err != nil {
		t.Fatal(err)
	}
	for _, qt := range []uint16{dns.TypeAAAA, dns.TypeMX, dns.TypeTXT} {
		r := ask(t, addr, "udp", "web.vm.", qt, 0)
		wantRcode(t, r, dns.RcodeSuccess)
		if len(r.Answer) != 0 {
			t.Errorf("%s: answers %v, want none", dns.TypeToString[qt], r.Answer)
		}
		if len(r.Ns) != 1 {
			t.Fatalf("%s: authority %v, want the SOA", dns.TypeToString[qt], r.Ns)
		}
		soa, ok := r.Ns[0].(*dns.SOA)
		if !ok || soa.Minttl != 5 || soa.Hdr.Ttl != 5 {
			t.Errorf("%s: authority %v, want an SOA with TTL and minimum 5", dns.TypeToString[qt], r.Ns[0])
		}
	}
	// An IPv6 record answers AAAA, and A is then NODATA.
	if err := s.Set("six", mustAddr("fd00::6")); err != nil {
		t.Fatal(err)
	}
	r := ask(t, addr, "udp", "six.vm.", dns.TypeAAAA, 0)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.AAAA).AAAA.String() != "fd00::6" {
		t.Errorf("six.vm AAAA: %v", r)
	}
	r = ask(t, addr, "udp", "six.vm.", dns.TypeA, 0)
	wantRcode(t, r, dns.RcodeSuccess)
	if len(r.Answer) != 0 {
		t.Errorf("six.vm A: %v, want NODATA", r.Answer)
	}
}

func TestZoneApex(t *testing.T) {
	up := startUpstream(t, "192.0.2.10")
	_, addr := startServer(t, Options{Upstreams: []string{up.addr}})
	r := ask(t, addr, "udp", "vm.", dns.TypeSOA, 0)
	wantRcode(t, r, dns.RcodeSuccess)
	if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != dns.TypeSOA {
		t.Errorf("vm. SOA: %v", r)
	}
	r = ask(t, addr, "udp", "VM.", dns.TypeA, 0)
	wantRcode(t, r, dns.RcodeSuccess)
	if len(r.Answer) != 0 {
		t.Errorf("vm. A: %v, want NODATA", r)
	}
	if n := up.queries(); n != 0 {
		t.Errorf("upstream got %d queries, want 0", n)
	}
}

func TestPTR(t *testing.T) {
	up := startUpstream(t, "192.0.2.10")
	s, addr := startServer(t, Options{
		Upstreams:    []string{up.addr},
		ReverseZones: []netip.Prefix{netip.MustParsePrefix("10.213.0.0/24")},
	})
	if err := s.Replace(map[string]netip.Addr{"web": mustAddr("10.213.0.5"), "db": mustAddr("10.213.0.6")}); err != nil {
		t.Fatal(err)
	}
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, addr, network, "5.0.213.10.in-addr.arpa.", dns.TypePTR, 0)
		wantRcode(t, r, dns.RcodeSuccess)
		if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "web.vm." || r.Answer[0].Header().Ttl != 5 {
			t.Fatalf("PTR 10.213.0.5: %v", r)
		}
	}
	r := ask(t, addr, "udp", "6.0.213.10.IN-ADDR.ARPA.", dns.TypePTR, 0)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "db.vm." {
		t.Fatalf("PTR 10.213.0.6 (upper case): %v", r)
	}
	// An address of the bridge range with no VM: NXDOMAIN from here, with
	// the reverse zone's SOA.
	r = ask(t, addr, "udp", "9.0.213.10.in-addr.arpa.", dns.TypePTR, 0)
	wantRcode(t, r, dns.RcodeNameError)
	if len(r.Ns) != 1 || r.Ns[0].Header().Name != "0.213.10.in-addr.arpa." {
		t.Errorf("authority %v, want the SOA of 0.213.10.in-addr.arpa.", r.Ns)
	}
	if n := up.queries(); n != 0 {
		t.Fatalf("upstream got %d queries, want 0", n)
	}
	// Another address is not ours: forwarded (the fake upstream says NXDOMAIN).
	r = ask(t, addr, "udp", "1.2.0.192.in-addr.arpa.", dns.TypePTR, 0)
	wantRcode(t, r, dns.RcodeNameError)
	if n := up.queries(); n != 1 {
		t.Errorf("upstream got %d queries, want 1 (the foreign PTR)", n)
	}
	// A removed VM's address is NXDOMAIN at once.
	s.Remove("web")
	wantRcode(t, ask(t, addr, "udp", "5.0.213.10.in-addr.arpa.", dns.TypePTR, 0), dns.RcodeNameError)
}

func TestRemoveAndReplace(t *testing.T) {
	s, addr := startServer(t, Options{})
	if err := s.Set("a", mustAddr("10.213.0.2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set("b", mustAddr("10.213.0.3")); err != nil {
		t.Fatal(err)
	}
	wantA(t, ask(t, addr, "udp", "a.vm.", dns.TypeA, 0), "10.213.0.2")
	s.Remove("a")
	s.Remove("never-existed")
	wantRcode(t, ask(t, addr, "udp", "a.vm.", dns.TypeA, 0), dns.RcodeNameError)
	wantA(t, ask(t, addr, "udp", "b.vm.", dns.TypeA, 0), "10.213.0.3")

	// Set moves a name to a new address; the old PTR goes.
	if err := s.Set("b", mustAddr("10.213.0.4")); err != nil {
		t.Fatal(err)
	}
	wantA(t, ask(t, addr, "udp", "b.vm.", dns.TypeA, 0), "10.213.0.4")

	if err := s.Replace(map[string]netip.Addr{"c": mustAddr("10.213.0.10"), "D": mustAddr("10.213.0.11")}); err != nil {
		t.Fatal(err)
	}
	wantRcode(t, ask(t, addr, "udp", "b.vm.", dns.TypeA, 0), dns.RcodeNameError)
	wantA(t, ask(t, addr, "udp", "c.vm.", dns.TypeA, 0), "10.213.0.10")
	wantA(t, ask(t, addr, "tcp", "d.vm.", dns.TypeA, 0), "10.213.0.11")

	// A bad entry leaves the records as they were.
	err := s.Replace(map[string]netip.Addr{"ok": mustAddr("10.213.0.20"), "bad_name": mustAddr("10.213.0.21")})
	if err == nil || !strings.Contains(err.Error(), "bad_name") {
		t.Fatalf("Replace with a bad name: %v", err)
	}
	wantA(t, ask(t, addr, "udp", "c.vm.", dns.TypeA, 0), "10.213.0.10")
	wantRcode(t, ask(t, addr, "udp", "ok.vm.", dns.TypeA, 0), dns.RcodeNameError)

	if err := s.Replace(nil); err != nil {
		t.Fatal(err)
	}
	wantRcode(t, ask(t, addr, "udp", "c.vm.", dns.TypeA, 0), dns.RcodeNameError)
}

func TestSetValidation(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ip := mustAddr("10.213.0.2")
	for _, name := range []string{"", "-a", "a-", "a.b", "a_b", "a b", "web.vm", strings.Repeat("x", 64)} {
		if err := s.Set(name, ip); err == nil {
			t.Errorf("Set(%q) accepted", name)
		}
	}
	if err := s.Set("web", netip.Addr{}); err == nil {
		t.Error("Set with no address accepted")
	}
	if err := s.Set("web", mustAddr("0.0.0.0")); err == nil {
		t.Error("Set with 0.0.0.0 accepted")
	}
	for _, name := range []string{"a", "a-b", "0", "Web-01", strings.Repeat("x", 63)} {
		if err := s.Set(name, ip); err != nil {
			t.Errorf("Set(%q): %v", name, err)
		}
	}
	// A mapped IPv4 address is stored as IPv4 (an A record).
	if err := s.Set("mapped", mustAddr("::ffff:10.213.0.9")); err != nil {
		t.Fatal(err)
	}
	if got := s.Records()["mapped"]; got != mustAddr("10.213.0.9") {
		t.Errorf("mapped stored as %v", got)
	}
	err = s.Replace(map[string]netip.Addr{"Web": ip, "web": ip})
	if err == nil {
		t.Error("Replace with a name given twice accepted")
	}
}

func TestAllowedClients(t *testing.T) {
	s, addr := startServer(t, Options{AllowedClients: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	if err := s.Set("web", mustAddr("10.213.0.5")); err != nil {
		t.Fatal(err)
	}
	wantRcode(t, ask(t, addr, "udp", "web.vm.", dns.TypeA, 0), dns.RcodeRefused)
	wantRcode(t, ask(t, addr, "tcp", "example.test.", dns.TypeA, 0), dns.RcodeRefused)

	_, addr2 := startServer(t, Options{AllowedClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	wantRcode(t, ask(t, addr2, "udp", "web.vm.", dns.TypeA, 0), dns.RcodeNameError)
}

func TestStartErrors(t *testing.T) {
	s, err := New(Options{ResolvConf: writeResolvConf(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, bad := range [][]string{nil, {"0.0.0.0:53"}, {"[::]:5353"}, {"localhost:53"}, {"127.0.0.1"}, {"127.0.0.1:99999"}} {
		if err := s.Start(ctx, bad); err == nil {
			t.Fatalf("Start(%q) accepted", bad)
		}
	}
	if err := s.Start(ctx, []string{"127.0.0.1:5300", "127.0.0.1:5300"}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("duplicate address: %v", err)
	}

	// A port taken by someone else: a BindError naming the address and the cause.
	taken, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenAddr := taken.LocalAddr().String()
	err = s.Start(ctx, []string{"127.0.0.1:0", takenAddr})
	var be *BindError
	if !errors.As(err, &be) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Start on a used port: %v, want a BindError with EADDRINUSE", err)
	}
	if msg := err.Error(); !strings.Contains(msg, takenAddr) || !strings.Contains(msg, "in use") {
		t.Errorf("error %q should name %s and say the port is in use", msg, takenAddr)
	}
	t.Log(err)
	if s.Addrs() != nil {
		t.Errorf("Addrs after a failed Start: %v", s.Addrs())
	}

	// An address this host does not have.
	err = s.Start(ctx, []string{"192.0.2.1:0"})
	if !errors.Is(err, syscall.EADDRNOTAVAIL) || !strings.Contains(err.Error(), "bridge") {
		t.Fatalf("Start on a foreign address: %v", err)
	}
	t.Log(err)

	// The failed Starts released what they had bound: the same server starts.
	if err := s.Start(ctx, []string{"127.0.0.1:0", "127.0.0.2:0"}); err != nil {
		t.Fatal(err)
	}
	if got := s.Addrs(); len(got) != 2 || got[0].Addr() != mustAddr("127.0.0.1") || got[1].Addr() != mustAddr("127.0.0.2") || got[0].Port() == 0 {
		t.Fatalf("Addrs %v", got)
	}
	if err := s.Start(ctx, []string{"127.0.0.1:0"}); err == nil {
		t.Fatal("second Start accepted")
	}
	if err := s.Set("web", mustAddr("10.213.0.5")); err != nil {
		t.Fatal(err)
	}
	for _, a := range s.Addrs() {
		wantA(t, ask(t, a.String(), "udp", "web.vm.", dns.TypeA, 0), "10.213.0.5")
		wantA(t, ask(t, a.String(), "tcp", "web.vm.", dns.TypeA, 0), "10.213.0.5")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Start(ctx, []string{"127.0.0.1:0"}); err == nil {
		t.Fatal("Start after Close accepted")
	}
}

// After Close (or the Start context ending) the sockets are released: the
// same address can be bound again, UDP and TCP.
func TestCloseReleasesAddresses(t *testing.T) {
	for _, how := range []string{"Close", "context"} {
		t.Run(how, func(t *testing.T) {
			s, err := New(Options{ResolvConf: writeResolvConf(t, ""), Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := s.Start(ctx, []string{"127.0.0.1:0"}); err != nil {
				t.Fatal(err)
			}
			addr := s.Addrs()[0].String()
			wantRcode(t, ask(t, addr, "udp", "x.vm.", dns.TypeA, 0), dns.RcodeNameError)
			if how == "context" {
				cancel()
			}
			if err := s.Close(); err != nil { // after cancel: waits for the shutdown it started
				t.Fatal(err)
			}
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				t.Fatalf("UDP %s still bound: %v", addr, err)
			}
			pc.Close()
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatalf("TCP %s still bound: %v", addr, err)
			}
			ln.Close()
		})
	}
}

func TestCloseBeforeStart(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestNewRejectsBadUpstreams(t *testing.T) {
	for _, u := range []string{"dns.example", "1.2.3.4:0", "0.0.0.0", "1.2.3.4:port", ""} {
		if _, err := New(Options{Upstreams: []string{u}}); err == nil {
			t.Errorf("upstream %q accepted", u)
		}
	}
}

func TestNotImplementedOpcode(t *testing.T) {
	_, addr := startServer(t, Options{})
	m := new(dns.Msg)
	m.SetNotify("web.vm.")
	c := &dns.Client{Net: "udp"}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	wantRcode(t, r, dns.RcodeNotImplemented)
}

// Records change while queries run (go test -race). A name that is never
// touched always resolves; the churned names resolve to their own address
// or are NXDOMAIN, never anything else.
func TestConcurrentSetAndQuery(t *testing.T) {
	s, addr := startServer(t, Options{Logger: testLoggerQuiet(t)})
	if err := s.Set("stable", mustAddr("10.213.0.2")); err != nil {
		t.Fatal(err)
	}
	const writers, readers, rounds = 4, 4, 200
	var wg sync.WaitGroup
	errs := make(chan error, writers+readers)
	for w := range writers {
		wg.Go(func() {
			for i := range rounds {
				name := fmt.Sprintf("vm%d", w)
				ip := netip.AddrFrom4([4]byte{10, 213, 1, byte(w)})
				switch i % 3 {
				case 0:
					if err := s.Set(name, ip); err != nil {
						errs <- err
						return
					}
				case 1:
					s.Remove(name)
				case 2:
					if err := s.Replace(map[string]netip.Addr{"stable": mustAddr("10.213.0.2"), name: ip}); err != nil {
						errs <- err
						return
					}
				}
				_ = s.Records()
			}
		})
	}
	for r := range readers {
		wg.Go(func() {
			c := &dns.Client{Net: "udp"}
			if r%2 == 1 {
				c.Net = "tcp"
			}
			for i := range rounds / 4 {
				w := i % writers
				for _, q := range []struct {
					name string
					ip   string
				}{{"stable.vm.", "10.213.0.2"}, {fmt.Sprintf("vm%d.vm.", w), fmt.Sprintf("10.213.1.%d", w)}} {
					m := new(dns.Msg)
					m.SetQuestion(q.name, dns.TypeA)
					resp, _, err := c.Exchange(m, addr)
					if err != nil {
						errs <- err
						return
					}
					switch {
					case resp.Rcode == dns.RcodeSuccess && len(resp.Answer) == 1 && resp.Answer[0].(*dns.A).A.String() == q.ip:
					case resp.Rcode == dns.RcodeNameError && q.name != "stable.vm.":
					default:
						errs <- fmt.Errorf("%s: unexpected reply %v", q.name, resp)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
