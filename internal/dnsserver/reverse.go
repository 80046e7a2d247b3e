package dnsserver

import (
	"net/netip"
	"strconv"
	"strings"
)

const (
	v4ReverseSuffix = ".in-addr.arpa."
	v6ReverseSuffix = ".ip6.arpa."
)

// parseReverse turns a lowercased, fully qualified PTR owner name for a
// whole address (d.c.b.a.in-addr.arpa. or 32 nibbles .ip6.arpa.) into the
// address. Names of partial addresses (zone cuts) are not addresses.
func parseReverse(name string) (netip.Addr, bool) {
	switch {
	case strings.HasSuffix(name, v4ReverseSuffix):
		labels := strings.Split(strings.TrimSuffix(name, v4ReverseSuffix), ".")
		if len(labels) != 4 {
			return netip.Addr{}, false
		}
		var b [4]byte
		for i, l := range labels {
			if l == "" || len(l) > 3 || (len(l) > 1 && l[0] == '0') {
				return netip.Addr{}, false
			}
			v, err := strconv.ParseUint(l, 10, 8)
			if err != nil {
				return netip.Addr{}, false
			}
			b[3-i] = byte(v)
		}
		return netip.AddrFrom4(b), true
	case strings.HasSuffix(name, v6ReverseSuffix):
		labels := strings.Split(strings.TrimSuffix(name, v6ReverseSuffix), ".")
		if len(labels) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, l := range labels {
			if len(l) != 1 {
				return netip.Addr{}, false
			}
			v, err := strconv.ParseUint(l, 16, 4)
			if err != nil {
				return netip.Addr{}, false
			}
			pos := 31 - i // nibble index from the most significant
			if pos%2 == 0 {
				b[pos/2] |= byte(v) << 4
			} else {
				b[pos/2] |= byte(v)
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

// reverseZoneName is the owner name of the reverse zone that holds prefix p,
// rounded out to a label boundary: 10.213.0.0/24 → 0.213.10.in-addr.arpa.,
// 10.213.0.0/22 → 213.10.in-addr.arpa.
func reverseZoneName(p netip.Prefix) string {
	p = p.Masked()
	a := p.Addr()
	var labels []string
	if a.Is4() {
		b := a.As4()
		for i := p.Bits()/8 - 1; i >= 0; i-- {
			labels = append(labels, strconv.Itoa(int(b[i])))
		}
		return strings.Join(append(labels, "in-addr", "arpa"), ".") + "."
	}
	b := a.As16()
	for i := p.Bits()/4 - 1; i >= 0; i-- {
		v := b[i/2]
		if i%2 == 0 {
			v >>= 4
		}
		labels = append(labels, strconv.FormatUint(uint64(v&0xf), 16))
	}
	return strings.Join(append(labels, "ip6", "arpa"), ".") + "."
}
