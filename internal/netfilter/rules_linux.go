package netfilter

import (
	"encoding/binary"
	"net/netip"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Chain names. The inet table holds NAT, the host input policy for the
// bridge and the forward policy; the bridge table holds what only a bridge
// hook sees (frames between two ports of the bridge, the source check on a
// tap).
const (
	chainPrerouting  = "prerouting"
	chainOutput      = "output"
	chainPostrouting = "postrouting"
	chainInput       = "input"
	chainForward     = "forward"
	chainVMForward   = "vm-forward" // per-VM accepts, jumped to from forward before its drops
	chainState       = "state"      // records of sysctls banger changed; never jumped to
)

type chainDef struct {
	family nftables.TableFamily
	name   string
	typ    nftables.ChainType // "" for a regular chain
	hook   *nftables.ChainHook
	prio   *nftables.ChainPriority
}

var chainDefs = []chainDef{
	{nftables.TableFamilyINet, chainPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest},
	{nftables.TableFamilyINet, chainOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest},
	{nftables.TableFamilyINet, chainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource},
	{nftables.TableFamilyINet, chainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter},
	{nftables.TableFamilyINet, chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter},
	{nftables.TableFamilyINet, chainVMForward, "", nil, nil},
	{nftables.TableFamilyINet, chainState, "", nil, nil},
	// Bridge family: "priority filter" is -200 there. The hook numbers of
	// NF_BR_PRE_ROUTING and NF_BR_FORWARD equal the inet ones.
	{nftables.TableFamilyBridge, chainPrerouting, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRef(-200)},
	{nftables.TableFamilyBridge, chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityRef(-200)},
}

var families = []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyBridge {
		return "bridge"
	}
	return "inet"
}

// ruleDef is one rule banger writes.
type ruleDef struct {
	family  nftables.TableFamily
	chain   string
	exprs   []expr.Any
	comment string
}

// --- expression helpers (register 1 unless said otherwise) ---

func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func cmp(op expr.CmpOp, data []byte) expr.Any {
	return &expr.Cmp{Op: op, Register: 1, Data: data}
}

func meta(key expr.MetaKey) expr.Any { return &expr.Meta{Key: key, Register: 1} }

func iifname(name string) []expr.Any {
	return []expr.Any{meta(expr.MetaKeyIIFNAME), cmp(expr.CmpOpEq, ifnameBytes(name))}
}

func iifnameNot(name string) []expr.Any {
	return []expr.Any{meta(expr.MetaKeyIIFNAME), cmp(expr.CmpOpNeq, ifnameBytes(name))}
}

func oifname(name string) []expr.Any {
	return []expr.Any{meta(expr.MetaKeyOIFNAME), cmp(expr.CmpOpEq, ifnameBytes(name))}
}

func oifnameNot(name string) []expr.Any {
	return []expr.Any{meta(expr.MetaKeyOIFNAME), cmp(expr.CmpOpNeq, ifnameBytes(name))}
}

// ifnamePrefix is `iifname "PREFIX*"` / `oifname "PREFIX*"`.
func ifnamePrefix(key expr.MetaKey, prefix string) []expr.Any {
	return []expr.Any{meta(key), cmp(expr.CmpOpEq, []byte(prefix))}
}

// ipv4 is `meta nfproto ipv4`, the guard before reading IPv4 header fields
// in the inet family.
func ipv4() []expr.Any {
	return []expr.Any{meta(expr.MetaKeyNFPROTO), cmp(expr.CmpOpEq, []byte{unix.NFPROTO_IPV4})}
}

func l4proto(p Proto) []expr.Any {
	return []expr.Any{meta(expr.MetaKeyL4PROTO), cmp(expr.CmpOpEq, []byte{p.number()})}
}

func payload(base expr.PayloadBase, off, n uint32) expr.Any {
	return &expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n}
}

func ipField(off uint32, op expr.CmpOp, a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{payload(expr.PayloadBaseNetworkHeader, off, 4), cmp(op, b[:])}
}

func ipSaddr(a netip.Addr) []expr.Any { return ipField(12, expr.CmpOpEq, a) }
func ipDaddr(a netip.Addr) []expr.Any { return ipField(16, expr.CmpOpEq, a) }

// ipSaddrIn is `ip saddr PREFIX`.
func ipSaddrIn(p netip.Prefix) []expr.Any {
	a := p.Masked().Addr().As4()
	mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
	return []expr.Any{
		payload(expr.PayloadBaseNetworkHeader, 12, 4),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		cmp(expr.CmpOpEq, a[:]),
	}
}

func dport(p uint16) []expr.Any {
	return []expr.Any{
		payload(expr.PayloadBaseTransportHeader, 2, 2),
		cmp(expr.CmpOpEq, binaryutil.BigEndian.PutUint16(p)),
	}
}

// ctBits is `ct KEY & BITS != 0` (ct state / ct status).
func ctBits(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		cmp(expr.CmpOpNeq, make([]byte, 4)),
	}
}

func ctEstablished() []expr.Any {
	return ctBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
}

// ctDNAT is `ct status dnat`.
func ctDNAT() []expr.Any { return ctBits(expr.CtKeySTATUS, ipsDstNAT) }

// fibDaddrLocal is `fib daddr type local`.
func fibDaddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		cmp(expr.CmpOpEq, binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)),
	}
}

func dnatTo(a netip.Addr, port uint16) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: b[:]},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4,
			RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2, Specified: true},
	}
}

var (
	accept = &expr.Verdict{Kind: expr.VerdictAccept}
	drop   = &expr.Verdict{Kind: expr.VerdictDrop}
	// reject answers with an ICMP(v6) "administratively prohibited", so a
	// guest's connect fails at once instead of hanging.
	reject = &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}
	masq   = &expr.Masq{}
)

func cat(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch v := p.(type) {
		case expr.Any:
			out = append(out, v)
		case []expr.Any:
			out = append(out, v...)
		default:
			panic("netfilter: cat of unexpected type")
		}
	}
	return out
}

// baseRules is the static policy of the config, in chain order.
func baseRules(c Config) []ruleDef {
	inet, br := nftables.TableFamilyINet, nftables.TableFamilyBridge
	b, gw := c.Bridge, c.gateway()
	base := func(what string) string { return commentPrefix + " base " + what }
	var rs []ruleDef
	add := func(fam nftables.TableFamily, chain, what string, exprs []expr.Any) {
		rs = append(rs, ruleDef{family: fam, chain: chain, exprs: exprs, comment: base(what)})
	}

	// Loopback-sourced traffic DNATed to a guest (published ports reached
	// on 127.0.0.1) leaves with the bridge address as source.
	add(inet, chainPostrouting, "loopback-to-guest-masquerade",
		cat(oifname(b), ipv4(), ipSaddrIn(netip.MustParsePrefix("127.0.0.0/8")), masq))

	// Host input from guests: replies, DNS and the allowed ports on the
	// bridge address, ping; everything else (any host address, including
	// 127/8 that route_localnet would otherwise let through) refused.
	add(inet, chainInput, "guest-established", cat(iifname(b), ctEstablished(), accept))
	for _, p := range []Proto{UDP, TCP} {
		add(inet, chainInput, "guest-dns-"+string(p), cat(iifname(b), ipv4(), ipDaddr(gw), l4proto(p), dport(53), accept))
	}
	for _, h := range c.HostPorts {
		add(inet, chainInput, "guest-allowed-"+string(h.Proto)+"-"+strconv.Itoa(int(h.Port)),
			cat(iifname(b), ipv4(), ipDaddr(gw), l4proto(h.Proto), dport(h.Port), accept))
	}
	add(inet, chainInput, "guest-ping", cat(iifname(b), ipv4(), ipDaddr(gw), l4proto(icmp),
		payload(expr.PayloadBaseTransportHeader, 0, 1), cmp(expr.CmpOpEq, []byte{8}), accept))
	add(inet, chainInput, "guest-to-host-reject", cat(iifname(b), reject))

	// Forward. Bridged guest-to-guest traffic only shows up here when
	// br_netfilter passes bridged frames to the IP hooks; treat it like
	// the bridge table does.
	if c.AllowGuestToGuest {
		add(inet, chainForward, "guest-to-guest-accept", cat(iifname(b), oifname(b), accept))
	} else {
		add(inet, chainForward, "guest-to-guest-drop", cat(iifname(b), oifname(b), drop))
	}
	add(inet, chainForward, "from-guests-established", cat(iifname(b), ctEstablished(), accept))
	add(inet, chainForward, "to-guests-established", cat(oifname(b), ctEstablished(), accept))
	add(inet, chainForward, "per-vm", []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainVMForward}})
	add(inet, chainForward, "from-guests-reject", cat(iifname(b), reject))
	add(inet, chainForward, "to-guests-drop", cat(oifname(b), drop))

	// Bridge: frames from one VM tap to another.
	if !c.AllowGuestToGuest {
		add(br, chainForward, "guest-to-guest-drop",
			cat(ifnamePrefix(expr.MetaKeyIIFNAME, c.tapPrefix()), ifnamePrefix(expr.MetaKeyOIFNAME, c.tapPrefix()), drop))
	}
	return rs
}

// ipsDstNAT is IPS_DST_NAT of the conntrack status bits.
const ipsDstNAT = 1 << 5

// vmRuleDefs are the rules of one VM.
func vmRuleDefs(c Config, v VMRules) []ruleDef {
	inet, br := nftables.TableFamilyINet, nftables.TableFamilyBridge
	b := c.Bridge
	tg := tag{vm: v.ID, name: v.Name}
	var rs []ruleDef
	add := func(fam nftables.TableFamily, chain string, t tag, exprs []expr.Any) {
		rs = append(rs, ruleDef{family: fam, chain: chain, exprs: exprs, comment: t.String()})
	}
	if v.Tap != "" {
		t := tg
		t.kind = kindAntispoof
		zero := netip.IPv4Unspecified()
		// ether type ip, ip saddr != IP and != 0.0.0.0: drop.
		add(br, chainPrerouting, t, cat(iifname(v.Tap),
			payload(expr.PayloadBaseLLHeader, 12, 2), cmp(expr.CmpOpEq, binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)),
			ipField(12, expr.CmpOpNeq, v.IP), ipField(12, expr.CmpOpNeq, zero), drop))
		// ether type arp, arp saddr ip (offset 14 of the ARP header) likewise.
		ip, z := v.IP.As4(), zero.As4()
		add(br, chainPrerouting, t, cat(iifname(v.Tap),
			payload(expr.PayloadBaseLLHeader, 12, 2), cmp(expr.CmpOpEq, binaryutil.BigEndian.PutUint16(unix.ETH_P_ARP)),
			payload(expr.PayloadBaseNetworkHeader, 14, 4), cmp(expr.CmpOpNeq, ip[:]), cmp(expr.CmpOpNeq, z[:]), drop))
	}
	if v.NAT {
		t := tg
		t.kind = kindNAT
		add(inet, chainVMForward, t, cat(iifname(b), oifnameNot(b), ipv4(), ipSaddr(v.IP), accept))
		add(inet, chainPostrouting, t, cat(oifnameNot(b), ipv4(), ipSaddr(v.IP), masq))
	}
	for _, p := range v.Publish {
		t := tg
		t.kind = kindPublish
		t.publish = p
		var dst []expr.Any
		if p.HostIP.IsValid() {
			dst = ipDaddr(p.HostIP)
		} else {
			dst = fibDaddrLocal()
		}
		// From outside (never from the guests' own bridge). A loopback
		// host address cannot arrive from outside.
		if !p.HostIP.IsLoopback() {
			add(inet, chainPrerouting, t, cat(iifnameNot(b), ipv4(), dst, l4proto(p.Proto), dport(p.HostPort), dnatTo(v.IP, p.GuestPort)))
		}
		// From the host itself.
		add(inet, chainOutput, t, cat(ipv4(), dst, l4proto(p.Proto), dport(p.HostPort), dnatTo(v.IP, p.GuestPort)))
		add(inet, chainVMForward, t, cat(oifname(b), ipv4(), ipDaddr(v.IP), l4proto(p.Proto), dport(p.GuestPort), ctDNAT(), accept))
	}
	return rs
}

// stateRule is the record of a sysctl banger changed. A counter is its only
// expression (a rule needs one); the chain is never jumped to.
func stateRule(knob, prior string) ruleDef {
	return ruleDef{family: nftables.TableFamilyINet, chain: chainState,
		exprs: []expr.Any{&expr.Counter{}}, comment: stateComment(knob, prior)}
}
