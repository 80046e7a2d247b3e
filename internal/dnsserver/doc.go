// Package dnsserver is bangerd's DNS server: it answers <name>.vm for the
// running VMs and forwards every other query to the host's resolvers.
//
// Map of the package:
//
//	New, Options                 configuration (upstreams, TTL, reverse zones,
//	                             allowed clients, IP_FREEBIND, logger)
//	Set, Remove, Replace         the records, name → address; safe for concurrent
//	                             use, before or after Start; Replace rebuilds them
//	Start, Addrs, Close          listen on several IP:port addresses, UDP and TCP
//	                             each; port 0 picks one (Addrs reports it)
//	Options.Listen, Bind         sockets opened elsewhere (port 53 from the root
//	                             helper); Bind opens them as the server would
//	BindError                    a failed bind, naming the address and the likely cause
//
// Answers from the records (authoritative, TTL Options.TTL, default 5s):
//
//   - NAME.vm A (AAAA for an IPv6 record): the address. Names are compared
//     case-insensitively; the answer echoes the question's spelling.
//   - NAME.vm for a known NAME and another type: NOERROR with no answer
//     (NODATA) and the zone's SOA, so resolvers cache the negative answer
//     for the TTL only.
//   - Any other name under vm. (unknown, or more than one label): NXDOMAIN.
//     Nothing under vm. is ever forwarded.
//   - The in-addr.arpa / ip6.arpa name of a VM address: PTR NAME.vm. The name
//     of another address inside Options.ReverseZones (the bridge CIDR): NXDOMAIN,
//     not forwarded. Other reverse names are forwarded.
//
// Forwarding: every other query goes to the upstreams in order: a copy of
// the query (new ID) over UDP, again over TCP when the reply is truncated,
// each attempt bounded by Options.UpstreamTimeout. A transport failure,
// SERVFAIL, REFUSED or NOTIMP moves on to the next upstream; any other reply
// (NOERROR, NXDOMAIN, ...) is passed back unchanged apart from its ID, cut to
// the client's UDP size with the TC bit when it does not fit. When no
// upstream answers the client gets SERVFAIL.
//
// Upstream discovery: Options.Upstreams, or else the nameserver lines of
// /etc/resolv.conf, re-read whenever the file changes. A stub resolver on
// loopback (systemd-resolved's 127.0.0.53) is kept: the daemon forwards from
// the host, so the stub is reachable for queries from guests too. An
// upstream that is one of this server's own listen addresses is skipped,
// since forwarding to it would loop.
//
// Exposure: the server binds only the addresses it is given (wildcards are
// refused), so it answers the host on loopback and the guests on the bridge
// address; Options.AllowedClients additionally refuses sources outside the
// given prefixes.
package dnsserver
