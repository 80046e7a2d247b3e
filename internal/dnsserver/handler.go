package dnsserver

import (
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ednsSize is the UDP payload size this server advertises (the DNS flag
// day 2020 value).
const ednsSize = 1232

// serveDNS answers one query: from the records for .vm names and the VM
// addresses' PTR names, from the upstreams for everything else.
func (s *Server) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	start := time.Now()
	client := addrOf(w.RemoteAddr())
	udp := w.LocalAddr().Network() == "udp"

	var resp *dns.Msg
	via := "local"
	switch {
	case !s.clientAllowed(client):
		resp = s.errorReply(req, dns.RcodeRefused)
		via = "refused"
	case req.Opcode != dns.OpcodeQuery:
		resp = s.errorReply(req, dns.RcodeNotImplemented)
	case len(req.Question) != 1:
		resp = s.errorReply(req, dns.RcodeFormatError)
	default:
		lname := strings.ToLower(req.Question[0].Name)
		if resp = s.answerLocal(req, lname); resp == nil {
			resp, via = s.forwardReply(req)
		}
	}
	s.write(w, req, resp, udp)
	if len(req.Question) > 0 {
		q := req.Question[0]
		s.log.Debug("dns query", "client", client.String(), "name", q.Name, "type", dns.TypeToString[q.Qtype],
			"rcode", dns.RcodeToString[resp.Rcode], "answers", len(resp.Answer), "via", via,
			"duration", time.Since(start).Round(time.Microsecond))
	}
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (s *Server) clientAllowed(a netip.Addr) bool {
	if len(s.opts.AllowedClients) == 0 {
		return true
	}
	a = a.WithZone("")
	for _, p := range s.opts.AllowedClients {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// write sends resp with the request's ID, cut to what the client can take
// over UDP (its EDNS size, else 512 bytes; the TC bit tells it to use TCP).
func (s *Server) write(w dns.ResponseWriter, req, resp *dns.Msg, udp bool) {
	resp.Id = req.Id
	size := dns.MaxMsgSize
	if udp {
		size = dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
	}
	resp.Truncate(size)
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("dns: write reply", "client", w.RemoteAddr().String(), "err", err)
	}
}

// reply starts an authoritative reply to req.
func (s *Server) reply(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	if req.IsEdns0() != nil {
		m.SetEdns0(ednsSize, false)
	}
	return m
}

func (s *Server) errorReply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	if req.IsEdns0() != nil {
		m.SetEdns0(ednsSize, false)
	}
	return m
}

// answerLocal answers names this server owns, or returns nil for a query
// to forward. Every name in the vm. zone is answered here, found or not.
func (s *Server) answerLocal(req *dns.Msg, lname string) *dns.Msg {
	switch {
	case lname == Zone || strings.HasSuffix(lname, "."+Zone):
		return s.answerZone(req, lname)
	case strings.HasSuffix(lname, v4ReverseSuffix), strings.HasSuffix(lname, v6ReverseSuffix):
		return s.answerReverse(req, lname)
	}
	return nil
}

func classIN(q dns.Question) bool { return q.Qclass == dns.ClassINET || q.Qclass == dns.ClassANY }

func (s *Server) answerZone(req *dns.Msg, lname string) *dns.Msg {
	q := req.Question[0]
	m := s.reply(req)
	if lname == Zone {
		if classIN(q) && (q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY) {
			m.Answer = append(m.Answer, s.soa(Zone))
		} else {
			m.Ns = append(m.Ns, s.soa(Zone))
		}
		return m
	}
	label := strings.TrimSuffix(lname, "."+Zone)
	var ip netip.Addr
	ok := false
	if !strings.Contains(label, ".") {
		ip, ok = s.recs.lookup(label)
	}
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, s.soa(Zone))
		return m
	}
	if classIN(q) {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: s.ttl}
		switch {
		case ip.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IP(ip.AsSlice())})
		case ip.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.IP(ip.AsSlice())})
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, s.soa(Zone)) // NODATA
	}
	return m
}

// answerReverse answers the PTR name of a whole address when a VM has that
// address or it lies in one of Options.ReverseZones; otherwise (and for
// partial names) it returns nil and the query is forwarded.
func (s *Server) answerReverse(req *dns.Msg, lname string) *dns.Msg {
	a, ok := parseReverse(lname)
	if !ok {
		return nil
	}
	names := s.recs.reverse(a)
	zone, inZone := s.reverseZone(a)
	if len(names) == 0 && !inZone {
		return nil
	}
	q := req.Question[0]
	m := s.reply(req)
	if len(names) == 0 {
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, s.soa(zone))
		return m
	}
	if classIN(q) && (q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY) {
		for _, n := range names {
			m.Answer = append(m.Answer, &dns.PTR{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: s.ttl},
				Ptr: n + "." + Zone,
			})
		}
	}
	if len(m.Answer) == 0 && inZone {
		m.Ns = append(m.Ns, s.soa(zone))
	}
	return m
}

// reverseZone returns the reverse zone name of the narrowest of
// Options.ReverseZones that holds a.
func (s *Server) reverseZone(a netip.Addr) (string, bool) {
	best := -1
	for i, p := range s.opts.ReverseZones {
		if p.Contains(a) && (best < 0 || p.Bits() > s.opts.ReverseZones[best].Bits()) {
			best = i
		}
	}
	if best < 0 {
		return "", false
	}
	return reverseZoneName(s.opts.ReverseZones[best]), true
}

// soa is the synthetic SOA of a zone this server answers; its minimum (the
// negative-caching TTL) is the record TTL.
func (s *Server) soa(zone string) dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.ttl},
		Ns:      "ns." + Zone,
		Mbox:    "hostmaster." + Zone,
		Serial:  s.recs.soaSerial(),
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  s.ttl,
	}
}

// forwardReply forwards req and returns the reply to send and where it came
// from; SERVFAIL when no upstream could answer.
func (s *Server) forwardReply(req *dns.Msg) (*dns.Msg, string) {
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	default:
		s.warnf("dns: too many queries being forwarded; answering SERVFAIL", "limit", maxForwards)
		return s.errorReply(req, dns.RcodeServerFailure), "overload"
	}
	resp, up, err := s.forward(s.ctx, req)
	if err != nil {
		q := req.Question[0]
		s.warnf("dns: no upstream answered; answering SERVFAIL", "name", q.Name, "type", dns.TypeToString[q.Qtype], "err", err)
		return s.errorReply(req, dns.RcodeServerFailure), "servfail"
	}
	return resp, up.String()
}

// warnf logs a rate-limited warning.
func (s *Server) warnf(msg string, args ...any) {
	ok, suppressed := s.warn.allow(time.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed_since_last", suppressed)
	}
	s.log.Warn(msg, args...)
}
