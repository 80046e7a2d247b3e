package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// dumpRetries bounds the retries of a netlink dump the kernel reports as
// interrupted (the link or route table changed while it was being read).
const dumpRetries = 5

// retryDump runs a netlink dump until it is not interrupted.
func retryDump[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpRetries {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// lookupLink returns the link called name, or nil (and no error) if there is none.
func lookupLink(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up link %q: %w", name, err)
	}
	return l, nil
}

// deleteLink deletes l; a link already gone is not an error.
func deleteLink(l netlink.Link) error {
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %q: %w", l.Attrs().Name, err)
	}
	return nil
}

func isBridge(l netlink.Link) bool { return l.Type() == "bridge" }

func isTap(l netlink.Link) bool {
	t, ok := l.(*netlink.Tuntap)
	return ok && t.Mode == netlink.TUNTAP_MODE_TAP
}

// EnsureBridge makes sure the bridge cfg.Bridge exists, carries the gateway
// address of cfg.CIDR (with the CIDR's prefix length) and is up. It is
// idempotent. A link of that name that is not a bridge is an error. Before the
// bridge is created, or before the gateway address is added to it, every IPv4
// route of the current network namespace (all tables but the default routes)
// is checked: a route on another interface that overlaps cfg.CIDR is an error
// naming the route and the interface. A bridge this call created is deleted
// again if a later step fails.
func EnsureBridge(cfg Config) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	cidr := cfg.CIDR.Masked()
	gw := Gateway(cidr)

	br, err := lookupLink(cfg.Bridge)
	if err != nil {
		return err
	}
	if br != nil && !isBridge(br) {
		return fmt.Errorf("link %q exists but is a %s device, not a bridge; remove it or set another bridge name in config.toml", cfg.Bridge, br.Type())
	}

	hasAddr := false
	if br != nil {
		addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(br, netlink.FAMILY_V4) })
		if err != nil {
			return fmt.Errorf("list addresses of bridge %q: %w", cfg.Bridge, err)
		}
		for _, a := range addrs {
			ones, _ := a.Mask.Size()
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == gw && ones == cidr.Bits() {
				hasAddr = true
				break
			}
		}
	}

	if !hasAddr {
		brIndex := 0
		if br != nil {
			brIndex = br.Attrs().Index
		}
		if err := CheckRouteConflict(cidr, brIndex); err != nil {
			return err
		}
	}

	if br == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = cfg.Bridge
		attrs.HardwareAddr = bridgeMAC(cfg.Bridge)
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return fmt.Errorf("create bridge %q: %w", cfg.Bridge, err)
		}
		created, lerr := netlink.LinkByName(cfg.Bridge)
		if lerr != nil {
			return fmt.Errorf("look up new bridge %q: %w", cfg.Bridge, lerr)
		}
		br = created
		defer func() {
			if err != nil { // the function's named result
				_ = deleteLink(created)
			}
		}()
	}

	if !hasAddr {
		addr := &netlink.Addr{IPNet: &net.IPNet{
			IP:   net.IP(gw.AsSlice()),
			Mask: net.CIDRMask(cidr.Bits(), 32),
		}}
		if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s/%d to bridge %q: %w", gw, cidr.Bits(), cfg.Bridge, err)
		}
	}

	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return fmt.Errorf("set bridge %q up: %w", cfg.Bridge, err)
		}
	}
	return nil
}

// CheckRouteConflict returns an error if an IPv4 route on an interface other
// than the one with index skipIndex (0: none) overlaps cidr. Default routes and routes
// without an interface (blackhole, unreachable, ...) do not count.
func CheckRouteConflict(cidr netip.Prefix, skipIndex int) error {
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, bits := r.Dst.Mask.Size()
		ip, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok || bits != 32 || ones == 0 {
			continue
		}
		dst := netip.PrefixFrom(ip, ones).Masked()
		if !dst.Overlaps(cidr) {
			continue
		}
		var idx []int
		if r.LinkIndex > 0 {
			idx = append(idx, r.LinkIndex)
		}
		for _, nh := range r.MultiPath {
			if nh != nil && nh.LinkIndex > 0 {
				idx = append(idx, nh.LinkIndex)
			}
		}
		var names []string
		for _, i := range idx {
			if i == skipIndex {
				continue
			}
			name := fmt.Sprintf("index %d", i)
			if l, err := netlink.LinkByIndex(i); err == nil {
				name = l.Attrs().Name
			}
			names = append(names, fmt.Sprintf("%q", name))
		}
		if len(names) == 0 {
			continue
		}
		table := ""
		switch r.Table {
		case unix.RT_TABLE_MAIN, unix.RT_TABLE_UNSPEC:
		case unix.RT_TABLE_LOCAL:
			table = " (table local)"
		default:
			table = fmt.Sprintf(" (table %d)", r.Table)
		}
		return fmt.Errorf("network.cidr %s overlaps the existing route %s on interface %s%s; "+
			"set network.cidr in config.toml to a range that is not in use",
			cidr, dst, strings.Join(names, ", "), table)
	}
	return nil
}

// DeleteBridge deletes the bridge called name. A missing bridge is not an
// error; a link of that name that is not a bridge is an error and is left alone.
func DeleteBridge(name string) error {
	if err := ValidateName("bridge", name); err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	l, err := lookupLink(name)
	if err != nil || l == nil {
		return err
	}
	if !isBridge(l) {
		return fmt.Errorf("link %q is a %s device, not a bridge; not deleting it", name, l.Type())
	}
	return deleteLink(l)
}

// CreateTap creates the persistent TAP device name (IFF_TAP|IFF_NO_PI|
// IFF_VNET_HDR, single queue), attaches it to bridge and sets it up. owner is
// the uid allowed to attach to the tap (e.g. an unprivileged QEMU); -1 means
// no unprivileged owner: only root or a CAP_NET_ADMIN process may attach.
// A tap that already exists (a leftover of a crash) is deleted and created
// anew; a link of that name that is not a tap is an error. On failure nothing
// is left behind.
func CreateTap(name, bridge string, owner int) (err error) {
	if err := ValidateName("tap", name); err != nil {
		return err
	}
	if err := ValidateName("bridge", bridge); err != nil {
		return err
	}
	if name == bridge {
		return fmt.Errorf("tap name %q is the bridge's name", name)
	}
	if owner < -1 {
		return fmt.Errorf("invalid tap owner uid %d", owner)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	br, err := lookupLink(bridge)
	if err != nil {
		return err
	}
	if br == nil {
		return fmt.Errorf("bridge %q does not exist", bridge)
	}
	if !isBridge(br) {
		return fmt.Errorf("link %q is a %s device, not a bridge", bridge, br.Type())
	}

	if err := removeStaleTap(name); err != nil {
		return err
	}

	if err := createTapDevice(name, owner); err != nil {
		return err
	}
	tap, err := netlink.LinkByName(name)
	if err != nil {
		// Unreachable in practice; we cannot safely delete what we cannot see.
		return fmt.Errorf("look up new tap %q: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = deleteLink(tap)
		}
	}()
	if err := netlink.LinkSetMasterByIndex(tap, br.Attrs().Index); err != nil {
		return fmt.Errorf("attach tap %q to bridge %q: %w", name, bridge, err)
	}
	if tapHookBeforeUp != nil {
		if err := tapHookBeforeUp(name); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return fmt.Errorf("set tap %q up: %w", name, err)
	}
	return nil
}

// tapHookBeforeUp, when set (by tests only), runs in CreateTap after the tap
// is attached to the bridge; an error it returns makes CreateTap fail there,
// which exercises the rollback of a tap that is already made and attached.
var tapHookBeforeUp func(name string) error

// DeleteTap deletes the tap called name. A missing tap is not an error; a
// link of that name that is not a tap is an error and is left alone.
func DeleteTap(name string) error {
	if err := ValidateName("tap", name); err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	l, err := lookupLink(name)
	if err != nil || l == nil {
		return err
	}
	if !isTap(l) {
		return fmt.Errorf("link %q is a %s device, not a tap; not deleting it", name, l.Type())
	}
	return deleteLink(l)
}

// ListLinks returns the sorted names of the links whose name starts with prefix.
func ListLinks(prefix string) ([]string, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	links, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var names []string
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, prefix) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

// RenameTap renames the tap from to to, keeping its bridge port and setting
// it up again (a link must be down to be renamed). A stale tap already called
// to is replaced; a link called to that is not a tap is an error. On failure
// the tap keeps its old name where possible.
func RenameTap(from, to string) error {
	if err := ValidateName("tap", from); err != nil {
		return err
	}
	if err := ValidateName("tap", to); err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	l, err := lookupLink(from)
	if err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("tap %q does not exist", from)
	}
	if !isTap(l) {
		return fmt.Errorf("link %q is a %s device, not a tap; not renaming it", from, l.Type())
	}
	if err := removeStaleTap(to); err != nil {
		return err
	}
	if err := netlink.LinkSetDown(l); err != nil {
		return fmt.Errorf("set tap %q down: %w", from, err)
	}
	if err := netlink.LinkSetName(l, to); err != nil {
		_ = netlink.LinkSetUp(l)
		return fmt.Errorf("rename tap %q to %q: %w", from, to, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set tap %q up: %w", to, err)
	}
	return nil
}

// removeStaleTap deletes a tap called name (a leftover of a crash) so the
// name can be used; a link of that name that is not a tap is an error.
func removeStaleTap(name string) error {
	old, err := lookupLink(name)
	if err != nil || old == nil {
		return err
	}
	if !isTap(old) {
		return fmt.Errorf("link %q exists and is a %s device, not a tap; not replacing it", name, old.Type())
	}
	if err := deleteLink(old); err != nil {
		return fmt.Errorf("replace stale tap: %w", err)
	}
	return nil
}
