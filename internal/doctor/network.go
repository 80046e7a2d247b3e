package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/hostnet"
	"banger/internal/resolved"
)

// checkTun: every VM NIC is a tap made through /dev/net/tun.
func checkTun(_ context.Context, _ Env) Result {
	if err := openDev("/dev/net/tun"); err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return fail(fmt.Sprintf("cannot open %v", err), "run bangerd as root (taps need CAP_NET_ADMIN)")
		}
		return fail(fmt.Sprintf("TUN/TAP unavailable (%v); VMs cannot get network interfaces", err),
			"modprobe tun (a kernel with CONFIG_TUN), or create the node: mkdir -p /dev/net && mknod /dev/net/tun c 10 200")
	}
	return pass("/dev/net/tun opens")
}

// checkNftables: NAT and port publishing use nf_tables. The kernel side is
// asked over netlink (listing tables changes nothing); the nft binary is
// reported when present.
func checkNftables(ctx context.Context, env Env) Result {
	kernelErr := func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		defer c.CloseLasting()
		_, err = c.ListTables()
		return err
	}()
	p, binErr := env.lookPath("nft")
	bin := "nft not installed"
	if binErr == nil {
		bin = p
		if v, err := version(ctx, p, "--version"); err == nil {
			bin = fmt.Sprintf("%s (%s)", v, p)
		}
	}
	switch {
	case kernelErr != nil && binErr != nil:
		return warn(fmt.Sprintf("nf_tables does not answer over netlink (%v) and %s", kernelErr, bin),
			apt+"nftables (and a kernel with CONFIG_NF_TABLES)")
	case kernelErr != nil:
		return warn(fmt.Sprintf("%s, but nf_tables does not answer over netlink: %v", bin, kernelErr),
			"run bangerd as root with a kernel with CONFIG_NF_TABLES")
	case binErr != nil:
		return pass("nf_tables answers over netlink (banger needs no nft binary; " + bin + ")")
	}
	return pass("nf_tables answers over netlink; " + bin)
}

// checkNetwork: the bridge name and CIDR from the config against the host's
// links and routes, with the same rule as hostnet.EnsureBridge: an IPv4 route
// on another interface that overlaps network.cidr is a conflict, unless the
// bridge already carries the gateway address.
func checkNetwork(_ context.Context, env Env) Result {
	cfg := env.cfg()
	cidr, err := netip.ParsePrefix(cfg.Network.CIDR)
	if err != nil {
		return fail(fmt.Sprintf("network.cidr = %q: %v", cfg.Network.CIDR, err),
			fmt.Sprintf("set network.cidr = \"10.213.0.0/24\" in %s", env.ConfigPath))
	}
	cidr = cidr.Masked()
	nc := hostnet.Config{Bridge: cfg.Network.Bridge, CIDR: cidr, TapPrefix: hostnet.DefaultTapPrefix}
	if err := nc.Validate(); err != nil {
		return fail("network: "+err.Error(), fmt.Sprintf("fix network.bridge / network.cidr in %s", env.ConfigPath))
	}
	gw := hostnet.Gateway(cidr)
	brIndex := 0
	l, err := netlink.LinkByName(cfg.Network.Bridge)
	var nf netlink.LinkNotFoundError
	switch {
	case err == nil:
		if l.Type() != "bridge" {
			return fail(fmt.Sprintf("link %q exists but is a %s device, not a bridge", cfg.Network.Bridge, l.Type()),
				fmt.Sprintf("set network.bridge to an unused name in %s (or delete the link: ip link del %s)", env.ConfigPath, cfg.Network.Bridge))
		}
		brIndex = l.Attrs().Index
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return warn(fmt.Sprintf("list addresses of bridge %q: %v", cfg.Network.Bridge, err), "run `banger doctor` as root")
		}
		for _, a := range addrs {
			ones, _ := a.Mask.Size()
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == gw && ones == cidr.Bits() {
				return pass(fmt.Sprintf("bridge %s exists with %s/%d", cfg.Network.Bridge, gw, cidr.Bits()))
			}
		}
	case errors.As(err, &nf) || errors.Is(err, unix.ENODEV):
	default:
		return warn(fmt.Sprintf("look up link %q: %v", cfg.Network.Bridge, err), "run `banger doctor` as root")
	}
	var routes []netlink.Route
	for range 5 { // a dump interrupted by a concurrent change is retried
		routes, err = netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return warn("list routes: "+err.Error(), "run `banger doctor` again")
	}
	var dsts []netip.Prefix
	for _, r := range routes {
		if dst, ok := routePrefix(r); ok {
			dsts = append(dsts, dst)
		}
	}
	if err := hostnet.CheckRouteConflict(cidr, brIndex); err != nil {
		return fail(err.Error(), fmt.Sprintf("set network.cidr = %q in %s (a range no host route uses)", freeCIDR(cidr, dsts), env.ConfigPath))
	}
	state := "will be created"
	if brIndex != 0 {
		state = "exists; gets " + gw.String()
	}
	return pass(fmt.Sprintf("bridge %s (%s), network.cidr %s overlaps no host route", cfg.Network.Bridge, state, cidr))
}

// routePrefix is a route's IPv4 destination; default routes do not count.
func routePrefix(r netlink.Route) (netip.Prefix, bool) {
	if r.Dst == nil {
		return netip.Prefix{}, false
	}
	ones, bits := r.Dst.Mask.Size()
	ip, ok := netip.AddrFromSlice(r.Dst.IP.To4())
	if !ok || bits != 32 || ones == 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones).Masked(), true
}

// freeCIDR suggests a range of cidr's size that no route overlaps, trying
// 10.213.0.0 upwards and then 172.16–31 in steps of the prefix size.
func freeCIDR(cidr netip.Prefix, dsts []netip.Prefix) string {
	bits := cidr.Bits()
	free := func(p netip.Prefix) bool {
		for _, d := range dsts {
			if d.Overlaps(p) {
				return false
			}
		}
		return true
	}
	for second := 213; second < 256; second++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(second), 0, 0}), bits).Masked()
		if free(p) {
			return p.String()
		}
	}
	for second := 16; second < 32; second++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(second), 0, 0}), bits).Masked()
		if free(p) {
			return p.String()
		}
	}
	return "10.213.0.0/24"
}

// checkDNSRouting: NAME.vm resolves for every program on the host only if the
// host's resolver sends the vm domain to banger's DNS server. On
// systemd-resolved hosts the daemon sets that per link on the bridge; other
// resolvers need one line of their own config (docs/dns.md).
func checkDNSRouting(ctx context.Context, env Env) Result {
	cfg := env.cfg()
	if cfg.Network.DNSListen == "" {
		return warn("the NAME.vm DNS server is off (network.dns_listen = \"\")",
			"set network.dns_listen = \"127.0.0.1:5354\" in "+env.ConfigPath)
	}
	cidr, _ := netip.ParsePrefix(cfg.Network.CIDR)
	gw, bridge := hostnet.Gateway(cidr), cfg.Network.Bridge
	manual := fmt.Sprintf("resolvectl dns %s %s && resolvectl domain %s %s", bridge, gw, bridge, resolved.Domain)
	h := env.Resolver
	if err := h.Active(); err != nil {
		if !errors.Is(err, resolved.ErrNotActive) {
			return warn(err.Error(), apt+"systemd-resolved (it provides resolvectl)")
		}
		return warn(fmt.Sprintf("the host resolver is not systemd-resolved, so only banger's own server (%s) answers NAME.vm", cfg.Network.DNSListen),
			fmt.Sprintf("route the vm domain to %s in your resolver, e.g. dnsmasq: server=/vm/%s (docs/dns.md has dnsmasq, NetworkManager and unbound recipes); or query it directly: dig -p %d @%s NAME.vm",
				cfg.Network.DNSListen, strings.Replace(cfg.Network.DNSListen, ":", "#", 1), dnsPort(cfg.Network.DNSListen), dnsHost(cfg.Network.DNSListen)))
	}
	if l, _ := netlink.LinkByName(bridge); l == nil {
		return pass("systemd-resolved: the daemon routes .vm to " + bridge + " when it starts (the bridge does not exist yet)")
	}
	routed, err := h.Routed(ctx, bridge)
	if err != nil {
		return warn(err.Error(), manual)
	}
	if !routed {
		return warn("systemd-resolved does not route .vm to "+bridge+" (the daemon sets it at start)",
			"restart the daemon (banger daemon stop; the next command starts it), or: "+manual)
	}
	return pass(fmt.Sprintf("systemd-resolved sends .vm queries to %s on %s", gw, bridge))
}

func dnsHost(listen string) string {
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return listen
	}
	return ap.Addr().String()
}

func dnsPort(listen string) uint16 {
	ap, _ := netip.ParseAddrPort(listen)
	return ap.Port()
}
