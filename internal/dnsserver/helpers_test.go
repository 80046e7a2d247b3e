package dnsserver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"banger/internal/testutil/nsleak"
)

// testNetnsPrefix names every network namespace these tests create.
const testNetnsPrefix = "bgtest-dns-"

func TestMain(m *testing.M) { nsleak.Main(m, testNetnsPrefix) }

// testLogWriter sends log lines to t.Log until the test is over.
type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startServer starts a server on 127.0.0.1:0 and returns it with its
// address. Options without upstreams get an empty resolv.conf, so nothing is
// ever forwarded off the machine.
func startServer(t *testing.T, opts Options) (*Server, string) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if len(opts.Upstreams) == 0 && opts.ResolvConf == "" {
		opts.ResolvConf = writeResolvConf(t, "")
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background(), []string{"127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s, s.Addrs()[0].String()
}

func writeResolvConf(t *testing.T, content string) string {
	t.Helper()
	p := t.TempDir() + "/resolv.conf"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// ask sends one query with the miekg client ("udp" or "tcp"); edns > 0 adds
// an OPT record with that UDP size.
func ask(t *testing.T, addr, network, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	r, err := exchange(addr, network, name, qtype, edns)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

func exchange(addr, network, name string, qtype uint16, edns uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

func wantRcode(t *testing.T, r *dns.Msg, rcode int) {
	t.Helper()
	if r.Rcode != rcode {
		t.Fatalf("rcode %s, want %s\n%v", dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode], r)
	}
}

// wantA checks that r answers exactly one A record with ip.
func wantA(t *testing.T, r *dns.Msg, ip string) {
	t.Helper()
	wantRcode(t, r, dns.RcodeSuccess)
	if len(r.Answer) != 1 {
		t.Fatalf("%d answers, want 1\n%v", len(r.Answer), r)
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok || a.A.String() != ip {
		t.Fatalf("answer %v, want A %s", r.Answer[0], ip)
	}
}

// fakeUpstream is a DNS server on 127.0.0.1 standing in for the host's
// resolver: UDP and TCP on one port, counting the queries per transport.
type fakeUpstream struct {
	addr     string
	udp, tcp atomic.Int64
	// ip is the address example.test. resolves to.
	ip string
	// failAll makes every answer SERVFAIL.
	failAll atomic.Bool
}

// bigTXT is the number of TXT strings of big.test. (about 3 KB).
const bigTXT = 30

func startUpstream(t *testing.T, ip string) *fakeUpstream {
	t.Helper()
	u, err := startUpstreamOn(t, "127.0.0.1:0", ip)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// startUpstreamOn starts a fake upstream on listen (UDP and TCP).
func startUpstreamOn(t *testing.T, listen, ip string) (*fakeUpstream, error) {
	t.Helper()
	u := &fakeUpstream{ip: ip}
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	// With port 0 the TCP port (the UDP one's number) may be taken, for
	// example by an outgoing connection: try another.
	for range 10 {
		if pc, err = net.ListenPacket("udp", listen); err != nil {
			return nil, err
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		if !strings.HasSuffix(listen, ":0") {
			return nil, err
		}
	}
	if err != nil {
		return nil, err
	}
	u.addr = pc.LocalAddr().String()
	handler := dns.HandlerFunc(u.serve)
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		errc := make(chan error, 1)
		go func() { errc <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-errc:
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u, nil
}

func (u *fakeUpstream) serve(w dns.ResponseWriter, req *dns.Msg) {
	udp := w.LocalAddr().Network() == "udp"
	if udp {
		u.udp.Add(1)
	} else {
		u.tcp.Add(1)
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	q := req.Question[0]
	if u.failAll.Load() {
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	switch strings.ToLower(q.Name) {
	case "example.test.":
		if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
				A:   net.ParseIP(u.ip),
			})
		}
	case "big.test.":
		for i := range bigTXT {
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300},
				Txt: []string{fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 90))},
			})
		}
		if udp {
			// Always truncated over UDP, whatever the EDNS size: the
			// client must come back over TCP.
			m.Answer = m.Answer[:1]
			m.Truncated = true
		}
	case "servfail.test.":
		m.Rcode = dns.RcodeServerFailure
	default:
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

func (u *fakeUpstream) queries() int64 { return u.udp.Load() + u.tcp.Load() }

// deadUpstream is a bound UDP port that never answers (and a TCP port
// nobody listens on: the kernel refuses connections).
func deadUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// testLoggerQuiet is testLogger at Info level (no per-query lines).
func testLoggerQuiet(t *testing.T) *slog.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
