package netfilter

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"banger/internal/testutil/nsleak"
)

// testNetnsPrefix names every namespace these tests create.
const testNetnsPrefix = "bgtest-nf-"

func TestMain(m *testing.M) { nsleak.Main(m, testNetnsPrefix) }

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
}

// testNS is a named network namespace created by a test. The test's own
// goroutine never enters it: do runs code on a fresh locked thread that is
// discarded afterwards.
type testNS struct {
	name string
	h    netns.NsHandle
}

// newNS creates bgtest-nf-<rand>-<role>, deleted in t.Cleanup.
func newNS(t *testing.T, role string) *testNS {
	t.Helper()
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	name := testNetnsPrefix + hex.EncodeToString(rnd[:]) + "-" + role
	var h netns.NsHandle
	err := onThread(func() error {
		var err error
		// NewNamed switches this (throwaway) thread into the namespace.
		h, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		_ = netns.DeleteNamed(name)
		t.Fatalf("create netns %s: %v", name, err)
	}
	n := &testNS{name: name, h: h}
	t.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
		if _, err := os.Stat(filepath.Join(nsleak.Dir, name)); !os.IsNotExist(err) {
			t.Errorf("netns %s still mounted after cleanup (stat: %v)", name, err)
		}
	})
	if err := n.do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("netns %s: lo up: %v", name, err)
	}
	return n
}

// onThread runs f on a new goroutine locked to its OS thread and never
// unlocked, so the thread (whatever namespace f left it in) is destroyed
// when the goroutine ends.
func onThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- f()
	}()
	return <-errc
}

// do runs f inside the namespace. Sockets f creates stay in the namespace
// for their whole life, whichever goroutine uses them later.
func (n *testNS) do(f func() error) error {
	return onThread(func() error {
		if err := netns.Set(n.h); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.name, err)
		}
		return f()
	})
}

func (n *testNS) must(t *testing.T, what string, f func() error) {
	t.Helper()
	if err := n.do(f); err != nil {
		t.Fatalf("%s in %s: %v", what, n.name, err)
	}
}

// exec runs argv under `ip netns exec` and returns its stdout.
func (n *testNS) exec(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := n.execErr(argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (n *testNS) execErr(argv ...string) (string, error) {
	return n.execStdin(nil, argv...)
}

func (n *testNS) execStdin(stdin []byte, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name}, argv...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ip netns exec %s %s: %v: %s", n.name, strings.Join(argv, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// sysctl reads a /proc/sys file inside the namespace.
func (n *testNS) sysctl(t *testing.T, path string) string {
	t.Helper()
	var v string
	n.must(t, "read "+path, func() error {
		b, err := os.ReadFile(path)
		v = strings.TrimSpace(string(b))
		return err
	})
	return v
}

func (n *testNS) setSysctl(t *testing.T, path, v string) {
	t.Helper()
	n.must(t, "write "+path, func() error { return os.WriteFile(path, []byte(v), 0o644) })
}

// topo is the test network:
//
//	upstream ns: eth0 198.51.100.2/24, no route to the guests
//	host ns:     uplink 198.51.100.1/24 (veth to upstream)
//	             banger0 10.213.0.1/24 (bridge) with ports bgtapg1, bgtapg2
//	guest1 ns:   eth0 10.213.0.2/24 (veth peer of bgtapg1), default via .1
//	guest2 ns:   eth0 10.213.0.3/24 (veth peer of bgtapg2), default via .1
type topo struct {
	host, up, g1, g2 *testNS
	cfg              Config
	g1IP, g2IP       netip.Addr
	upIP, uplinkIP   netip.Addr
	tap1, tap2       string
}

const (
	testBridge = "banger0"
	ipForward  = "/proc/sys/net/ipv4/ip_forward"
)

func newTopo(t *testing.T) *topo {
	t.Helper()
	needRoot(t)
	tp := &topo{
		host: newNS(t, "host"), up: newNS(t, "up"), g1: newNS(t, "g1"), g2: newNS(t, "g2"),
		cfg:  Config{Bridge: testBridge, CIDR: netip.MustParsePrefix("10.213.0.0/24")},
		g1IP: netip.MustParseAddr("10.213.0.2"), g2IP: netip.MustParseAddr("10.213.0.3"),
		upIP: netip.MustParseAddr("198.51.100.2"), uplinkIP: netip.MustParseAddr("198.51.100.1"),
		tap1: "bgtapg1", tap2: "bgtapg2",
	}
	tp.host.must(t, "build host side", func() error {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: testBridge}}); err != nil {
			return err
		}
		br, err := netlink.LinkByName(testBridge)
		if err != nil {
			return err
		}
		if err := addrUp(br, "10.213.0.1/24"); err != nil {
			return err
		}
		up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink"}, PeerName: "eth0",
			PeerNamespace: netlink.NsFd(int(tp.up.h))}
		if err := netlink.LinkAdd(up); err != nil {
			return err
		}
		if err := addrUp(up, "198.51.100.1/24"); err != nil {
			return err
		}
		for _, g := range []struct {
			tap string
			ns  *testNS
		}{{tp.tap1, tp.g1}, {tp.tap2, tp.g2}} {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: g.tap, MasterIndex: br.Attrs().Index}, PeerName: "eth0",
				PeerNamespace: netlink.NsFd(int(g.ns.h))}
			if err := netlink.LinkAdd(v); err != nil {
				return fmt.Errorf("veth %s: %w", g.tap, err)
			}
			if err := netlink.LinkSetUp(v); err != nil {
				return err
			}
		}
		return nil
	})
	tp.up.must(t, "configure upstream", func() error { return configureEth0("198.51.100.2/24", "") })
	tp.g1.must(t, "configure guest1", func() error { return configureEth0("10.213.0.2/24", "10.213.0.1") })
	tp.g2.must(t, "configure guest2", func() error { return configureEth0("10.213.0.3/24", "10.213.0.1") })
	return tp
}

func addrUp(l netlink.Link, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("addr %s on %s: %w", cidr, l.Attrs().Name, err)
	}
	return netlink.LinkSetUp(l)
}

// configureEth0 runs inside a namespace: address eth0, bring it up, and set
// the default route when gw is given.
func configureEth0(cidr, gw string) error {
	l, err := netlink.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := addrUp(l, cidr); err != nil {
		return err
	}
	if gw == "" {
		return nil
	}
	return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)})
}

// manager returns a Manager whose every call runs inside the host namespace.
type hostManager struct {
	m  *Manager
	ns *testNS
}

func (tp *topo) manager(t *testing.T, cfg Config) *hostManager {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &hostManager{m: m, ns: tp.host}
}

func (h *hostManager) Apply(v VMRules) error {
	return h.ns.do(func() error { return h.m.Apply(v) })
}
func (h *hostManager) Remove(id string) error {
	return h.ns.do(func() error { return h.m.Remove(id) })
}
func (h *hostManager) Reconcile(d []VMRules) error {
	return h.ns.do(func() error { return h.m.Reconcile(d) })
}
func (h *hostManager) Verify(d []VMRules) error {
	return h.ns.do(func() error { return h.m.Verify(d) })
}
func (h *hostManager) Ensure() error   { return h.ns.do(h.m.Ensure) }
func (h *hostManager) Teardown() error { return h.ns.do(h.m.Teardown) }
func (h *hostManager) VMs() ([]string, error) {
	var ids []string
	err := h.ns.do(func() error {
		var err error
		ids, err = h.m.VMs()
		return err
	})
	return ids, err
}

// --- servers and clients ---

// serveBanner listens on addr (tcp) inside ns and answers every connection
// with banner and a newline. Closed in t.Cleanup.
func serveBanner(t *testing.T, ns *testNS, addr, banner string) {
	t.Helper()
	var l net.Listener
	ns.must(t, "listen "+addr, func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(banner + "\n"))
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
	})
}

// dial connects from ns to addr with a bounded timeout.
func dial(ns *testNS, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	return c, err
}

// bannerFrom connects from ns to addr and returns the first line it reads.
func bannerFrom(ns *testNS, addr string) (string, error) {
	c, err := dial(ns, addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	var buf [256]byte
	var got []byte
	for {
		n, err := c.Read(buf[:])
		got = append(got, buf[:n]...)
		if i := bytes.IndexByte(got, '\n'); i >= 0 {
			return string(got[:i]), nil
		}
		if err != nil {
			return string(got), fmt.Errorf("read from %s: %w", addr, err)
		}
	}
}

// expectBanner asserts that ns reaches the server at addr.
func expectBanner(t *testing.T, ns *testNS, addr, want string) {
	t.Helper()
	got, err := bannerFrom(ns, addr)
	if err != nil {
		t.Fatalf("from %s: connect %s: %v (want banner %q)", ns.name, addr, err, want)
	}
	if got != want {
		t.Fatalf("from %s: %s answered %q, want %q", ns.name, addr, got, want)
	}
}

// blockTimeout bounds the wait of a connection expected to be dropped
// (refused ones fail at once).
const blockTimeout = 1500 * time.Millisecond

// expectBlocked asserts that ns cannot connect to addr.
func expectBlocked(t *testing.T, ns *testNS, addr string) {
	t.Helper()
	start := time.Now()
	c, err := dial(ns, addr, blockTimeout)
	t.Logf("from %s: connect %s: %v after %v", ns.name, addr, err, time.Since(start).Round(time.Millisecond))
	if err == nil {
		c.Close()
		t.Fatalf("from %s: connect %s succeeded, want it blocked", ns.name, addr)
	}
	if errors.Is(err, unix.ECONNREFUSED) {
		// A refusal by the target itself (RST) would mean the packet got
		// through; banger's reject sends ICMP admin-prohibited instead.
		t.Fatalf("from %s: connect %s refused by the target (%v): the packet got through", ns.name, addr, err)
	}
}

// nftList returns `nft list table FAMILY NAME` in the host namespace.
func (tp *topo) nftList(t *testing.T, family, name string) string {
	t.Helper()
	return tp.host.exec(t, "nft", "list", "table", family, name)
}

func (tp *topo) nftListErr(family, name string) (string, error) {
	return tp.host.execErr("nft", "list", "table", family, name)
}

// banger returns both of banger's tables as nft prints them.
func (tp *topo) banger(t *testing.T) string {
	t.Helper()
	return tp.nftList(t, "inet", "banger") + tp.nftList(t, "bridge", "banger")
}
