package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const testBridge = "bgbr0"

var testCIDR = netip.MustParsePrefix("172.31.0.0/24")

func testConfig() Config { return Config{Bridge: testBridge, CIDR: testCIDR} }

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("link %q: %v", name, err)
	}
	return l
}

func linkExists(t *testing.T, name string) bool {
	t.Helper()
	l, err := lookupLink(name)
	if err != nil {
		t.Fatal(err)
	}
	return l != nil
}

// peerSeq numbers the veth peers addDummy makes.
var peerSeq int

// addDummy creates an up dummy link, optionally with an address, in the
// test namespace. On a kernel without the dummy driver it makes a veth pair
// instead (the peer, bgpeerN, is up too so the link has carrier); callers
// compare the link's Type() with that of the link returned.
func addDummy(t *testing.T, name, cidr string) netlink.Link {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: attrs})
	if errors.Is(err, unix.EOPNOTSUPP) {
		peerSeq++
		peer := fmt.Sprintf("bgpeer%d", peerSeq)
		err = netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: peer})
		if err == nil {
			if err := netlink.LinkSetUp(mustLink(t, peer)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err != nil {
		t.Fatalf("add dummy %s: %v", name, err)
	}
	l := mustLink(t, name)
	if cidr != "" {
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			t.Fatalf("add %s to %s: %v", cidr, name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

func bridgeAddrs(t *testing.T, name string) []string {
	t.Helper()
	as, err := netlink.AddrList(mustLink(t, name), netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range as {
		out = append(out, a.IPNet.String())
	}
	return out
}

func TestEnsureBridge(t *testing.T) {
	enterTestNetns(t)
	cfg := testConfig()
	if err := EnsureBridge(cfg); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	br := mustLink(t, testBridge)
	if br.Type() != "bridge" {
		t.Fatalf("type = %s, want bridge", br.Type())
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("bridge is not up")
	}
	if got, want := br.Attrs().HardwareAddr.String(), bridgeMAC(testBridge).String(); got != want {
		t.Errorf("bridge MAC = %s, want %s", got, want)
	}
	if got := bridgeAddrs(t, testBridge); !slices.Equal(got, []string{"172.31.0.1/24"}) {
		t.Errorf("bridge addresses = %v, want [172.31.0.1/24]", got)
	}
	// The connected route of the CIDR is on the bridge.
	routes, err := netlink.RouteList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Dst != nil && r.Dst.String() == "172.31.0.0/24" }) {
		t.Errorf("no 172.31.0.0/24 route on the bridge: %v", routes)
	}

	// Idempotent: same link, one address, still up.
	for range 2 {
		if err := EnsureBridge(cfg); err != nil {
			t.Fatalf("EnsureBridge again: %v", err)
		}
	}
	again := mustLink(t, testBridge)
	if again.Attrs().Index != br.Attrs().Index {
		t.Errorf("bridge recreated: index %d -> %d", br.Attrs().Index, again.Attrs().Index)
	}
	if got := bridgeAddrs(t, testBridge); len(got) != 1 {
		t.Errorf("bridge addresses after repeat = %v", got)
	}

	// Repairs a bridge that was set down and lost its address.
	if err := netlink.LinkSetDown(again); err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr("172.31.0.1/24")
	if err := netlink.AddrDel(again, a); err != nil {
		t.Fatal(err)
	}
	if err := EnsureBridge(cfg); err != nil {
		t.Fatalf("EnsureBridge repair: %v", err)
	}
	if mustLink(t, testBridge).Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("bridge not set up again")
	}
	if got := bridgeAddrs(t, testBridge); !slices.Equal(got, []string{"172.31.0.1/24"}) {
		t.Errorf("bridge addresses after repair = %v", got)
	}

	// An unmasked CIDR means the same network.
	if err := EnsureBridge(Config{Bridge: testBridge, CIDR: netip.MustParsePrefix("172.31.0.9/24")}); err != nil {
		t.Fatalf("EnsureBridge unmasked: %v", err)
	}
	if got := bridgeAddrs(t, testBridge); len(got) != 1 {
		t.Errorf("bridge addresses after unmasked = %v", got)
	}

	if err := EnsureBridge(Config{Bridge: "bad name", CIDR: testCIDR}); err == nil {
		t.Errorf("EnsureBridge with invalid name: want error")
	}
}

func TestEnsureBridgeNotABridge(t *testing.T) {
	enterTestNetns(t)
	d := addDummy(t, testBridge, "")
	err := EnsureBridge(testConfig())
	if err == nil || !strings.Contains(err.Error(), "not a bridge") || !strings.Contains(err.Error(), testBridge) {
		t.Fatalf("EnsureBridge over a dummy = %v, want a 'not a bridge' error naming it", err)
	}
	if l := mustLink(t, testBridge); l.Type() != d.Type() || l.Attrs().Index != d.Attrs().Index {
		t.Errorf("the dummy was touched: %s index %d", l.Type(), l.Attrs().Index)
	}
	if got := bridgeAddrs(t, testBridge); len(got) != 0 {
		t.Errorf("address added to the dummy: %v", got)
	}
	if err := DeleteBridge(testBridge); err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Errorf("DeleteBridge on a dummy = %v, want refusal", err)
	}
	if !linkExists(t, testBridge) {
		t.Errorf("DeleteBridge deleted a dummy")
	}
}

func TestEnsureBridgeRouteConflict(t *testing.T) {
	enterTestNetns(t)
	addDummy(t, "bgdummy0", "172.31.0.5/16")
	err := EnsureBridge(testConfig())
	if err == nil {
		t.Fatal("EnsureBridge with an overlapping route: want error")
	}
	msg := err.Error()
	for _, want := range []string{"172.31.0.0/16", `"bgdummy0"`, "network.cidr", "config.toml", "172.31.0.0/24"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	t.Logf("conflict error: %v", err)
	if linkExists(t, testBridge) {
		t.Errorf("bridge created despite the conflict")
	}

	// A wider CIDR that contains the route conflicts too.
	if err := EnsureBridge(Config{Bridge: testBridge, CIDR: netip.MustParsePrefix("172.16.0.0/12")}); err == nil {
		t.Errorf("EnsureBridge with a CIDR containing the route: want error")
	}
	// A disjoint range is fine.
	if err := EnsureBridge(Config{Bridge: testBridge, CIDR: netip.MustParsePrefix("172.30.0.0/24")}); err != nil {
		t.Fatalf("EnsureBridge on a free range: %v", err)
	}
	// Routes in other tables count as well.
	if err := netlink.RouteAdd(&netlink.Route{
		Dst:       &net.IPNet{IP: net.IPv4(10, 77, 0, 0).To4(), Mask: net.CIDRMask(16, 32)},
		LinkIndex: mustLink(t, "bgdummy0").Attrs().Index,
		Table:     100,
	}); err != nil {
		t.Fatal(err)
	}
	err = EnsureBridge(Config{Bridge: "bgbr1", CIDR: netip.MustParsePrefix("10.77.3.0/24")})
	if err == nil || !strings.Contains(err.Error(), "10.77.0.0/16") || !strings.Contains(err.Error(), "table 100") {
		t.Errorf("EnsureBridge over a table-100 route = %v, want error naming it", err)
	}
	// A default route does not count.
	if err := netlink.RouteAdd(&netlink.Route{
		Dst: nil, Gw: net.IPv4(172, 31, 0, 9).To4(), LinkIndex: mustLink(t, "bgdummy0").Attrs().Index,
	}); err != nil {
		t.Fatal(err)
	}
	if err := EnsureBridge(Config{Bridge: "bgbr2", CIDR: netip.MustParsePrefix("192.168.200.0/24")}); err != nil {
		t.Errorf("EnsureBridge with only a default route overlapping: %v", err)
	}
}

func TestDeleteBridge(t *testing.T) {
	enterTestNetns(t)
	if err := DeleteBridge(testBridge); err != nil {
		t.Fatalf("DeleteBridge of a missing bridge: %v", err)
	}
	if err := EnsureBridge(testConfig()); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := DeleteBridge(testBridge); err != nil {
			t.Fatalf("DeleteBridge: %v", err)
		}
		if linkExists(t, testBridge) {
			t.Fatalf("bridge still exists")
		}
	}
	if err := DeleteBridge("-x"); err == nil {
		t.Errorf("DeleteBridge with an invalid name: want error")
	}
}

func tapInfo(t *testing.T, name string) *netlink.Tuntap {
	t.Helper()
	l := mustLink(t, name)
	tt, ok := l.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("link %s is %T (%s), want *netlink.Tuntap", name, l, l.Type())
	}
	return tt
}

// checkTap checks that name is a persistent single-queue tap with TapFlags,
// attached to the bridge and up.
func checkTap(t *testing.T, name, bridge string) *netlink.Tuntap {
	t.Helper()
	tt := tapInfo(t, name)
	if tt.Mode != netlink.TUNTAP_MODE_TAP {
		t.Errorf("%s: mode %v, want tap", name, tt.Mode)
	}
	if tt.Flags&netlink.TUNTAP_NO_PI == 0 {
		t.Errorf("%s: IFF_NO_PI not set (flags %#x)", name, tt.Flags)
	}
	if tt.Flags&netlink.TUNTAP_VNET_HDR == 0 {
		t.Errorf("%s: IFF_VNET_HDR not set (flags %#x)", name, tt.Flags)
	}
	if tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Errorf("%s: IFF_MULTI_QUEUE set (flags %#x)", name, tt.Flags)
	}
	if tt.NonPersist {
		t.Errorf("%s: not persistent", name)
	}
	if tt.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: not up", name)
	}
	if br := mustLink(t, bridge); tt.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("%s: master index %d, want bridge %s (%d)", name, tt.Attrs().MasterIndex, bridge, br.Attrs().Index)
	}
	return tt
}

func TestCreateTap(t *testing.T) {
	tn := enterTestNetns(t)
	if err := EnsureBridge(testConfig()); err != nil {
		t.Fatal(err)
	}
	tap := TapName("vm-1")
	if err := CreateTap(tap, testBridge, -1); err != nil {
		t.Fatalf("CreateTap: %v", err)
	}
	tt := checkTap(t, tap, testBridge)
	if tt.Owner != 0 {
		t.Errorf("owner = %d, want 0 for owner -1", tt.Owner)
	}
	// The bridge keeps its own MAC with a port attached (gateway MAC stable).
	if got := mustLink(t, testBridge).Attrs().HardwareAddr.String(); got != bridgeMAC(testBridge).String() {
		t.Errorf("bridge MAC changed to %s after adding a port", got)
	}

	// A second tap with an owner.
	tap2 := TapName("vm-2")
	if err := CreateTap(tap2, testBridge, 65534); err != nil {
		t.Fatalf("CreateTap with owner: %v", err)
	}
	if tt := checkTap(t, tap2, testBridge); tt.Owner != 65534 {
		t.Errorf("owner = %d, want 65534", tt.Owner)
	}

	names, err := ListLinks(DefaultTapPrefix)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{tap, tap2}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("ListLinks(%q) = %v, want %v", DefaultTapPrefix, names, want)
	}
	if all, _ := ListLinks(""); !slices.Contains(all, testBridge) || !slices.Contains(all, "lo") {
		t.Errorf("ListLinks(\"\") = %v", all)
	}

	// Nothing of this reached the original namespace (read-only look-up).
	h, err := netlink.NewHandleAt(tn.orig)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, n := range []string{tap, tap2, testBridge} {
		if _, err := h.LinkByName(n); err == nil {
			t.Errorf("link %s is visible in the original netns", n)
		}
	}
}

func TestCreateTapErrors(t *testing.T) {
	enterTestNetns(t)
	tap := TapName("vm-err")
	if err := CreateTap(tap, testBridge, -1); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("CreateTap without a bridge = %v, want error", err)
	}
	if linkExists(t, tap) {
		t.Errorf("tap left behind after a missing bridge")
	}
	addDummy(t, "bgdummy0", "")
	if err := CreateTap(tap, "bgdummy0", -1); err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Errorf("CreateTap onto a dummy = %v, want error", err)
	}
	if linkExists(t, tap) {
		t.Errorf("tap left behind after a non-bridge master")
	}
	if err := EnsureBridge(testConfig()); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct{ name, bridge string }{{"", testBridge}, {"-x", testBridge}, {"1234567890123456", testBridge}, {tap, "bad name"}, {testBridge, testBridge}} {
		if err := CreateTap(bad.name, bad.bridge, -1); err == nil {
			t.Errorf("CreateTap(%q, %q): want error", bad.name, bad.bridge)
		}
	}
	if err := CreateTap(tap, testBridge, -2); err == nil {
		t.Errorf("CreateTap with owner -2: want error")
	}

	// A non-tap link of the tap's name is neither replaced nor deleted.
	d := addDummy(t, tap, "")
	if err := CreateTap(tap, testBridge, -1); err == nil || !strings.Contains(err.Error(), "not a tap") {
		t.Errorf("CreateTap over a dummy = %v, want refusal", err)
	}
	if err := DeleteTap(tap); err == nil || !strings.Contains(err.Error(), "not a tap") {
		t.Errorf("DeleteTap of a dummy = %v, want refusal", err)
	}
	if l := mustLink(t, tap); l.Type() != d.Type() || l.Attrs().Index != d.Attrs().Index {
		t.Errorf("dummy %s was replaced", tap)
	}
}

func TestCreateTapRollback(t *testing.T) {
	enterTestNetns(t)
	if err := EnsureBridge(testConfig()); err != nil {
		t.Fatal(err)
	}
	tap := TapName("vm-rollback")
	boom := errors.New("injected failure")
	reached := false
	tapHookBeforeUp = func(name string) error {
		reached = true
		// At this point the tap exists and is attached.
		if l := mustLink(t, name); l.Attrs().MasterIndex == 0 {
			t.Errorf("tap not attached when the hook ran")
		}
		return boom
	}
	t.Cleanup(func() { tapHookBeforeUp = nil })
	if err := CreateTap(tap, testBridge, -1); !errors.Is(err, boom) {
		t.Fatalf("CreateTap = %v, want the injected failure", err)
	}
	if !reached {
		t.Fatal("hook not reached")
	}
	if linkExists(t, tap) {
		t.Errorf("half-made tap %s left behind", tap)
	}
	tapHookBeforeUp = nil
	if err := CreateTap(tap, testBridge, -1); err != nil {
		t.Fatalf("CreateTap after a rollback: %v", err)
	}
	checkTap(t, tap, testBridge)
}

func TestCreateTapReplacesLeftover(t *testing.T) {
	enterTestNetns(t)
	if err := EnsureBridge(testConfig()); err != nil {
		t.Fatal(err)
	}
	tap := TapName("vm-crash")
	if err := CreateTap(tap, testBridge, -1); err != nil {
		t.Fatal(err)
	}
	first := checkTap(t, tap, testBridge).Attrs().Index
	if err := CreateTap(tap, testBridge, -1); err != nil {
		t.Fatalf("CreateTap over an existing tap: %v", err)
	}
	second := checkTap(t, tap, testBridge).Attrs().Index
	if second == first {
		t.Errorf("tap not recreated (index %d)", first)
	}

	// A stale tap made elsewhere, with other flags, detached and down.
	if err := DeleteTap(tap); err != nil {
		t.Fatal(err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = tap
	stale := &netlink.Tuntap{LinkAttrs: attrs, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_DEFAULTS}
	if err := netlink.LinkAdd(stale); err != nil {
		t.Fatalf("add stale tap: %v", err)
	}
	if tt := tapInfo(t, tap); tt.Flags&netlink.TUNTAP_VNET_HDR != 0 || tt.Attrs().MasterIndex != 0 {
		t.Fatalf("stale tap setup wrong: flags %#x master %d", tt.Flags, tt.Attrs().MasterIndex)
	}
	if err := CreateTap(tap, testBridge, 1000); err != nil {
		t.Fatalf("CreateTap over a stale tap: %v", err)
	}
	if tt := checkTap(t, tap, testBridge); tt.Owner != 1000 {
		t.Errorf("owner = %d, want 1000", tt.Owner)
	}
}

func TestDeleteTap(t *testing.T) {
	enterTestNetns(t)
	tap := TapName("vm-del")
	if err := DeleteTap(tap); err != nil {
		t.Fatalf("DeleteTap of a missing tap: %v", err)
	}
	if err := EnsureBridge(testConfig()); err != nil {
		t.Fatal(err)
	}
	if err := CreateTap(tap, testBridge, -1); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := DeleteTap(tap); err != nil {
			t.Fatalf("DeleteTap: %v", err)
		}
		if linkExists(t, tap) {
			t.Fatal("tap still exists")
		}
	}
	if err := DeleteTap(testBridge); err == nil || !strings.Contains(err.Error(), "not a tap") {
		t.Errorf("DeleteTap of the bridge = %v, want refusal", err)
	}
	if !linkExists(t, testBridge) {
		t.Errorf("DeleteTap deleted the bridge")
	}
	if names, _ := ListLinks(DefaultTapPrefix); len(names) != 0 {
		t.Errorf("taps left: %v", names)
	}
	if err := DeleteTap("bad name"); err == nil {
		t.Errorf("DeleteTap with an invalid name: want error")
	}
}

// attachAs opens /dev/net/tun in the test thread (so in the test namespace),
// then, on a separate thread whose credentials alone are dropped to uid/gid,
// attaches it to the tap as QEMU would. The thread is discarded afterwards.
func attachAs(t *testing.T, tap string, uid int) error {
	t.Helper()
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		defer unix.Close(fd)
		// Never unlocked: the thread, with its changed credentials, exits
		// with this goroutine.
		runtime.LockOSThread()
		// Raw syscalls change the credentials of this thread only (the
		// syscall package's wrappers would change every thread).
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
			res <- errSkip{e}
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			res <- errSkip{e}
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			res <- errSkip{e}
			return
		}
		ifr, err := unix.NewIfreq(tap)
		if err != nil {
			res <- err
			return
		}
		ifr.SetUint16(TapFlags)
		res <- unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}()
	err = <-res
	var s errSkip
	if errors.As(err, &s) {
		t.Skipf("cannot drop privileges to uid %d on one thread: %v", uid, s.errno)
	}
	return err
}

type errSkip struct{ errno unix.Errno }

func (e errSkip) Error() string { return e.errno.Error() }

func TestTapOwner(t *testing.T) {
	enterTestNetns(t)
	if err := EnsureBridge(testConfig()); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	owned, closed := TapName("vm-owned"), TapName("vm-rootonly")
	if err := CreateTap(owned, testBridge, nobody); err != nil {
		t.Fatal(err)
	}
	if err := CreateTap(closed, testBridge, -1); err != nil {
		t.Fatal(err)
	}
	if err := attachAs(t, owned, nobody); err != nil {
		t.Errorf("uid %d attaching to its own tap: %v", nobody, err)
	}
	if err := attachAs(t, closed, nobody); !errors.Is(err, unix.EPERM) {
		t.Errorf("uid %d attaching to a tap with owner -1 = %v, want EPERM", nobody, err)
	}
	if err := attachAs(t, closed, 0); err != nil {
		t.Errorf("root attaching to a tap with owner -1: %v", err)
	}
	// The taps are intact after the attach/detach.
	checkTap(t, owned, testBridge)
	checkTap(t, closed, testBridge)
}
