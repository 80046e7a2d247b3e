package dnsserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// parseUpstream accepts "IP" (port 53) or "IP:port" ("[v6]:port"); an IPv6
// address may carry a zone. Host names are refused: resolving them would
// need a resolver.
func parseUpstream(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Errorf("upstream %q: port 0", s)
		}
		if ap.Addr().IsUnspecified() {
			return netip.AddrPort{}, fmt.Errorf("upstream %q: unspecified address", s)
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("upstream %q: want IP or IP:port", s)
	}
	if a.IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("upstream %q: unspecified address", s)
	}
	return netip.AddrPortFrom(a.Unmap(), 53), nil
}

// parseResolvConf returns the nameservers of a resolv.conf, in order.
// Lines that do not parse are skipped (and reported in bad).
func parseResolvConf(data []byte) (servers []netip.AddrPort, bad []string) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || a.IsUnspecified() {
			bad = append(bad, f[1])
			continue
		}
		servers = append(servers, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return servers, bad
}

// upstreamSource yields the current upstream list: a fixed one, or the
// nameservers of a resolv.conf, re-read whenever the file changes (inode,
// size or mtime), so a host whose network changes is followed.
type upstreamSource struct {
	fixed []netip.AddrPort
	path  string // resolv.conf; "" when fixed

	mu     sync.Mutex
	key    fileKey
	cached []netip.AddrPort
	err    error
}

type fileKey struct {
	ino, size  int64
	mtime      int64
	exists     bool
	statFailed bool
}

func statKey(path string) fileKey {
	fi, err := os.Stat(path)
	if err != nil {
		return fileKey{statFailed: !os.IsNotExist(err)}
	}
	k := fileKey{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		k.ino = int64(st.Ino)
	}
	return k
}

// get returns the upstreams and whether the list changed since the last call
// (for logging), or an error when resolv.conf cannot be read.
func (u *upstreamSource) get() (ups []netip.AddrPort, changed bool, bad []string, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.path == "" {
		first := u.cached == nil
		u.cached = u.fixed
		return u.fixed, first, nil, nil
	}
	k := statKey(u.path)
	if k == u.key && (u.cached != nil || u.err != nil) {
		return u.cached, false, nil, u.err
	}
	u.key = k
	data, rerr := os.ReadFile(u.path)
	if rerr != nil {
		u.cached, u.err = []netip.AddrPort{}, fmt.Errorf("read upstream nameservers: %w", rerr)
		return u.cached, true, nil, u.err
	}
	servers, bad := parseResolvConf(data)
	u.cached, u.err = append([]netip.AddrPort{}, servers...), nil
	return u.cached, true, bad, nil
}

// errNoUpstream: there is no upstream to ask.
var errNoUpstream = errors.New("no upstream nameserver configured")

// forward asks the upstreams in turn. A transport failure, a mismatched
// reply, SERVFAIL, REFUSED and NOTIMP move on to the next one; any other
// reply is returned as is. When every upstream fails, the last rcode reply
// received (if any) is returned, else the joined errors.
func (s *Server) forward(ctx context.Context, req *dns.Msg) (*dns.Msg, netip.AddrPort, error) {
	ups := s.upstreams()
	if len(ups) == 0 {
		return nil, netip.AddrPort{}, errNoUpstream
	}
	var (
		last     *dns.Msg
		lastFrom netip.AddrPort
		errs     []error
	)
	for _, up := range ups {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		resp, err := s.exchange(ctx, req, up)
		if err != nil {
			s.log.Debug("dns upstream failed", "upstream", up.String(), "name", req.Question[0].Name,
				"type", dns.TypeToString[req.Question[0].Qtype], "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", up, err))
			continue
		}
		switch resp.Rcode {
		case dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNotImplemented:
			s.log.Debug("dns upstream answered with a failure rcode; trying the next", "upstream", up.String(),
				"name", req.Question[0].Name, "rcode", dns.RcodeToString[resp.Rcode])
			last, lastFrom = resp, up
			errs = append(errs, fmt.Errorf("%s: rcode %s", up, dns.RcodeToString[resp.Rcode]))
			continue
		}
		return resp, up, nil
	}
	if last != nil {
		return last, lastFrom, nil
	}
	return nil, netip.AddrPort{}, errors.Join(errs...)
}

// exchange sends req to one upstream over UDP and, when the reply is
// truncated, again over TCP. Each attempt has its own timeout.
func (s *Server) exchange(ctx context.Context, req *dns.Msg, up netip.AddrPort) (*dns.Msg, error) {
	q := req.Copy()
	q.Id = dns.Id()
	addr := up.String()
	resp, err := s.exchangeOnce(ctx, "udp", q, addr)
	if err != nil {
		return nil, err
	}
	if resp.Truncated {
		resp, err = s.exchangeOnce(ctx, "tcp", q, addr)
		if err != nil {
			return nil, fmt.Errorf("truncated over UDP; over TCP: %w", err)
		}
	}
	return resp, nil
}

func (s *Server) exchangeOnce(ctx context.Context, network string, q *dns.Msg, addr string) (*dns.Msg, error) {
	actx, cancel := context.WithTimeout(ctx, s.opts.UpstreamTimeout)
	defer cancel()
	c := &dns.Client{Net: network, Timeout: s.opts.UpstreamTimeout}
	co, err := c.DialContext(actx, addr)
	if err != nil {
		return nil, err
	}
	defer co.Close()
	// The client only honours the context's deadline: close the socket
	// when it is cancelled (Close) so the read ends at once.
	stop := context.AfterFunc(actx, func() { co.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(actx, q, co)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if !resp.Response {
		return nil, errors.New("reply without the QR bit")
	}
	if resp.Rcode != dns.RcodeFormatError && !sameQuestion(q, resp) {
		return nil, errors.New("reply for another question")
	}
	if len(resp.Question) == 0 {
		resp.Question = append([]dns.Question(nil), q.Question...)
	}
	return resp, nil
}

// sameQuestion reports whether resp answers q's question (names compared
// case-insensitively: some servers do not preserve case).
func sameQuestion(q, resp *dns.Msg) bool {
	if len(resp.Question) != 1 || len(q.Question) != 1 {
		return false
	}
	a, b := q.Question[0], resp.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// upstreams is the current list with this server's own listen addresses
// left out (forwarding to itself would loop).
func (s *Server) upstreams() []netip.AddrPort {
	ups, changed, bad, err := s.source.get()
	if changed {
		if err != nil {
			s.log.Warn("dns: cannot read upstream nameservers; forwarded queries get SERVFAIL", "err", err)
		} else {
			if len(bad) > 0 {
				s.log.Warn("dns: ignored nameserver lines", "file", s.source.path, "values", bad)
			}
			from := s.source.path
			if from == "" {
				from = "options"
			}
			s.log.Info("dns upstreams", "from", from, "upstreams", apStrings(ups))
		}
	}
	self := s.boundAddrs()
	out := make([]netip.AddrPort, 0, len(ups))
	for _, up := range ups {
		if isSelf(up, self) {
			if changed {
				s.log.Warn("dns: upstream is this server itself; skipped", "upstream", up.String())
			}
			continue
		}
		out = append(out, up)
	}
	if changed && len(out) == 0 {
		s.log.Warn("dns: no upstream nameserver; queries outside .vm get SERVFAIL")
	}
	return out
}

func isSelf(up netip.AddrPort, self []netip.AddrPort) bool {
	for _, a := range self {
		if a.Port() == up.Port() && a.Addr().WithZone("") == up.Addr().WithZone("") {
			return true
		}
	}
	return false
}

func apStrings(aps []netip.AddrPort) []string {
	out := make([]string, len(aps))
	for i, a := range aps {
		out[i] = a.String()
	}
	return out
}

// warnLimiter lets one warning through per interval and counts the rest, so
// a guest hammering a dead upstream cannot flood the daemon log.
type warnLimiter struct {
	mu         sync.Mutex
	every      time.Duration
	last       time.Time
	suppressed int
}

// allow reports whether to log now and how many were suppressed since.
func (w *warnLimiter) allow(now time.Time) (bool, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.last.IsZero() && now.Sub(w.last) < w.every {
		w.suppressed++
		return false, 0
	}
	n := w.suppressed
	w.last, w.suppressed = now, 0
	return true, n
}
