package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Defaults.
const (
	// DefaultHostAddr is the loopback address the host's resolver (for
	// example systemd-resolved, per link for the "vm" domain) can query.
	DefaultHostAddr = "127.0.0.1:5353"
	// DefaultResolvConf is where the host's upstream nameservers are read.
	DefaultResolvConf = "/etc/resolv.conf"
	// DefaultTTL is the TTL of every answer about a VM: short, since VMs
	// come and go.
	DefaultTTL = 5 * time.Second
	// DefaultUpstreamTimeout bounds one attempt at one upstream (UDP, and
	// again TCP after a truncated reply).
	DefaultUpstreamTimeout = 2 * time.Second
	// Zone is the domain answered from the records, never forwarded.
	Zone = "vm."
)

// maxForwards bounds the queries being forwarded at once; past it a query
// gets SERVFAIL at once instead of another goroutine and socket.
const maxForwards = 256

// Options configure a Server. The zero value is usable.
type Options struct {
	// Logger receives structured logs; nil discards them. Per-query lines
	// are at Debug level; upstream trouble is a rate-limited Warn.
	Logger *slog.Logger
	// Upstreams are the resolvers every query outside .vm is forwarded to,
	// tried in order: "IP" (port 53) or "IP:port". Empty: the nameservers of
	// ResolvConf, re-read when that file changes.
	Upstreams []string
	// ResolvConf is the file the upstreams come from when Upstreams is
	// empty; default DefaultResolvConf.
	ResolvConf string
	// UpstreamTimeout bounds one attempt at one upstream; default
	// DefaultUpstreamTimeout. A query forwarded to N dead upstreams gets
	// SERVFAIL after about N times this.
	UpstreamTimeout time.Duration
	// TTL of the answers from the records, rounded down to seconds (at
	// least 1s); default DefaultTTL.
	TTL time.Duration
	// ReverseZones are address ranges this server is authoritative for in
	// reverse DNS (typically the bridge CIDR): a PTR query for an address
	// inside them that no VM has gets NXDOMAIN instead of being forwarded.
	// PTR queries for addresses of VMs are answered whatever this says.
	ReverseZones []netip.Prefix
	// AllowedClients, when not empty, limits who gets an answer (REFUSED
	// otherwise): typically 127.0.0.0/8, ::1/128 and the bridge CIDR. The
	// server only binds the addresses given to Start (never a wildcard), so
	// this matters only for packets routed to those addresses from
	// elsewhere.
	AllowedClients []netip.Prefix
	// FreeBind sets IP_FREEBIND on the sockets (Linux), so an address that
	// is not on any interface yet (the bridge, before the first VM) can be
	// bound; the server answers on it once the address appears.
	FreeBind bool
	// Listen, when set, opens the sockets of an address instead of the
	// server binding them itself; it returns nil, nil, nil to let the
	// server bind. An unprivileged daemon gets port 53 on the bridge
	// address this way from its root helper.
	Listen func(ctx context.Context, addr netip.AddrPort) (net.PacketConn, net.Listener, error)
}

// listen opens one address's sockets through Options.Listen or bind.
func (s *Server) listen(ctx context.Context, ap netip.AddrPort) (net.PacketConn, net.Listener, netip.AddrPort, error) {
	if s.opts.Listen != nil {
		pc, ln, err := s.opts.Listen(ctx, ap)
		if err != nil {
			return nil, nil, ap, &BindError{Network: "udp+tcp", Addr: ap, Err: err}
		}
		if pc != nil && ln != nil {
			ua := pc.LocalAddr().(*net.UDPAddr).AddrPort()
			return pc, ln, netip.AddrPortFrom(ua.Addr().Unmap(), ua.Port()), nil
		}
	}
	return bind(ctx, ap, s.opts.FreeBind)
}

// Server is the DNS server. Create it with New, fill it with Set or Replace
// (before or after Start), Start it, and Close it.
type Server struct {
	opts   Options
	log    *slog.Logger
	ttl    uint32
	recs   *table
	source *upstreamSource
	sem    chan struct{}
	warn   warnLimiter

	mu      sync.Mutex
	started bool
	bound   []netip.AddrPort
	servers []*dns.Server
	ctx     context.Context // cancelled on Close: aborts forwards in flight
	cancel  context.CancelFunc
	stopCtx func() bool // unregisters the Start ctx watcher

	closeOnce sync.Once
	closed    chan struct{}
	closeErr  error
}

// New checks opts and returns a server that is not listening yet.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ResolvConf == "" {
		opts.ResolvConf = DefaultResolvConf
	}
	if opts.UpstreamTimeout <= 0 {
		opts.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultTTL
	}
	ttl := uint32(opts.TTL / time.Second)
	if ttl == 0 {
		ttl = 1
	}
	src := &upstreamSource{}
	if len(opts.Upstreams) > 0 {
		for _, u := range opts.Upstreams {
			ap, err := parseUpstream(u)
			if err != nil {
				return nil, fmt.Errorf("dnsserver: %w", err)
			}
			src.fixed = append(src.fixed, ap)
		}
	} else {
		src.path = opts.ResolvConf
	}
	for _, p := range opts.ReverseZones {
		if !p.IsValid() {
			return nil, fmt.Errorf("dnsserver: invalid reverse zone %v", p)
		}
	}
	for _, p := range opts.AllowedClients {
		if !p.IsValid() {
			return nil, fmt.Errorf("dnsserver: invalid allowed client prefix %v", p)
		}
	}
	return &Server{
		opts:   opts,
		log:    opts.Logger,
		ttl:    ttl,
		recs:   newTable(),
		source: src,
		sem:    make(chan struct{}, maxForwards),
		warn:   warnLimiter{every: 30 * time.Second},
		closed: make(chan struct{}),
	}, nil
}

// Set adds the record name.vm → ip, replacing the one name had. name is one
// DNS label (letters, digits, '-'; case does not matter). Safe for
// concurrent use, before or after Start.
func (s *Server) Set(name string, ip netip.Addr) error {
	if err := s.recs.set(name, ip); err != nil {
		return fmt.Errorf("dnsserver: %w", err)
	}
	s.log.Debug("dns record set", "name", strings.ToLower(name), "ip", ip.String())
	return nil
}

// Remove deletes the record of name; an unknown name is not an error.
func (s *Server) Remove(name string) {
	s.recs.remove(name)
	s.log.Debug("dns record removed", "name", strings.ToLower(name))
}

// Replace swaps all records for records (a daemon rebuilds them this way on
// start). It checks every entry first: on an error nothing changes.
func (s *Server) Replace(records map[string]netip.Addr) error {
	if err := s.recs.replace(records); err != nil {
		return fmt.Errorf("dnsserver: %w", err)
	}
	s.log.Debug("dns records replaced", "count", len(records))
	return nil
}

// Records returns a copy of the records (lowercased names).
func (s *Server) Records() map[string]netip.Addr { return s.recs.snapshot() }

// Addrs returns the bound addresses, one per address given to Start and in
// that order, each serving UDP and TCP; a port 0 in Start is the real port
// here. Nil before Start.
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.bound...)
}

func (s *Server) boundAddrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bound
}

// Start binds every address in addrs ("IP:port"; port 0 picks a free one)
// for both UDP and TCP and serves on them until Close, or until ctx is done.
// Wildcard addresses (0.0.0.0, ::) are refused: the server answers only
// where it is told to, so it is no open resolver. When a bind fails nothing
// stays bound and the error (a *BindError) names the address and the likely
// cause. Start can be called once.
func (s *Server) Start(ctx context.Context, addrs []string) error {
	if len(addrs) == 0 {
		return errors.New("dnsserver: no listen address")
	}
	want := make([]netip.AddrPort, 0, len(addrs))
	seen := map[netip.AddrPort]bool{}
	for _, a := range addrs {
		ap, err := parseListenAddr(a)
		if err != nil {
			return err
		}
		if ap.Port() != 0 && seen[ap] {
			return fmt.Errorf("dnsserver: listen address %s given twice", ap)
		}
		seen[ap] = true
		want = append(want, ap)
	}

	// Close (on a failure once the sockets are served) and the upstream
	// check take s.mu: they run after it is released (deferred calls run
	// last-in first-out).
	closeAfter, serving := false, false
	defer func() {
		if closeAfter {
			s.Close()
		}
		if serving {
			s.upstreams() // read and log the upstreams now rather than at the first query
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("dnsserver: already started")
	}
	select {
	case <-s.closed:
		return errors.New("dnsserver: closed")
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	type pair struct {
		pc net.PacketConn
		ln net.Listener
	}
	var socks []pair
	var bound []netip.AddrPort
	for _, ap := range want {
		pc, ln, b, err := s.listen(ctx, ap)
		if err != nil {
			for _, p := range socks {
				p.pc.Close()
				p.ln.Close()
			}
			return err
		}
		socks = append(socks, pair{pc, ln})
		bound = append(bound, b)
	}

	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.bound = bound
	s.started = true
	handler := dns.HandlerFunc(s.serveDNS)
	type result struct {
		srv *dns.Server
		err error
	}
	results := make(chan result, 2*len(socks))
	for i, p := range socks {
		for _, srv := range []*dns.Server{
			{PacketConn: p.pc, Handler: handler},
			{Listener: p.ln, Handler: handler},
		} {
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			addr, network := bound[i].String(), "udp"
			if srv.Listener != nil {
				network = "tcp"
			}
			failed := make(chan error, 1)
			go func() {
				err := srv.ActivateAndServe()
				if err != nil {
					// It may have failed before serving: release the socket.
					if srv.PacketConn != nil {
						srv.PacketConn.Close()
					} else {
						srv.Listener.Close()
					}
					select {
					case <-s.ctx.Done():
					default:
						s.log.Error("dns server stopped", "addr", addr, "net", network, "err", err)
					}
				}
				failed <- err
			}()
			go func() {
				select {
				case <-started:
					results <- result{srv: srv}
				case err := <-failed:
					results <- result{err: fmt.Errorf("dnsserver: serve %s %s: %w", network, addr, err)}
				}
			}()
		}
	}
	var errs []error
	for range 2 * len(socks) {
		r := <-results
		if r.err != nil {
			errs = append(errs, r.err)
		} else {
			s.servers = append(s.servers, r.srv) // Close shuts down the ones that started
		}
	}
	if len(errs) > 0 {
		closeAfter = true
		return errors.Join(errs...)
	}
	// Close takes s.mu: it waits for Start to return.
	s.stopCtx = context.AfterFunc(ctx, func() { s.Close() })
	serving = true
	s.log.Info("dns server listening", "addrs", apStrings(bound), "zone", Zone, "ttl", s.ttl)
	return nil
}

// Close stops serving, aborts forwarded queries in flight, waits for the
// handlers to finish and releases the sockets. It is safe to call more than
// once and before Start.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		servers := s.servers
		if s.cancel != nil {
			s.cancel()
		}
		if s.stopCtx != nil {
			s.stopCtx()
		}
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var errs []error
		for _, srv := range servers {
			if err := srv.ShutdownContext(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		s.closeErr = errors.Join(errs...)
		if len(servers) > 0 {
			s.log.Info("dns server stopped")
		}
		close(s.closed)
	})
	<-s.closed
	return s.closeErr
}
