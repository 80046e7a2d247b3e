package dnsserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ipCmd runs `ip args...` (bounded) and fails the test on an error.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetns creates the named network namespace and deletes it in cleanup,
// checking that it is gone.
func newNetns(t *testing.T, name string) {
	t.Helper()
	ipCmd(t, "netns", "add", name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", name)); !os.IsNotExist(err) {
			t.Errorf("netns %s still there after cleanup (stat: %v)", name, err)
		}
	})
}

// startInNetns calls s.Start on a thread that has entered namespace ns, so
// the sockets belong to it. That thread is never unlocked: it is discarded
// when its goroutine ends and never runs other code.
func startInNetns(t *testing.T, s *Server, ns string, addrs []string) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- s.Start(context.Background(), addrs)
	}()
	return <-errc
}

// TestNetnsBridge serves on a bridge address the way bangerd does for its
// guests: the server's namespace has a bridge (10.213.0.1/24) with a veth
// port whose peer, 10.213.0.2/24, is in a client namespace where the real
// dig asks. The server binds the bridge address with FreeBind before the
// address exists (a daemon starting before the first VM), and a source
// outside AllowedClients is refused. All traffic stays inside the two
// namespaces the test creates.
func TestNetnsBridge(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) not found")
	}
	dig := needDig(t)
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	srvNS := testNetnsPrefix + hex.EncodeToString(rnd[:])
	cliNS := srvNS + "-c"
	newNetns(t, srvNS)
	newNetns(t, cliNS)

	ipCmd(t, "-n", srvNS, "link", "set", "lo", "up")
	ipCmd(t, "-n", srvNS, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", srvNS, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", cliNS)
	ipCmd(t, "-n", srvNS, "link", "set", "veth0", "master", "br0")
	ipCmd(t, "-n", srvNS, "link", "set", "veth0", "up")
	ipCmd(t, "-n", srvNS, "link", "set", "br0", "up")
	ipCmd(t, "-n", cliNS, "link", "set", "lo", "up")
	ipCmd(t, "-n", cliNS, "addr", "add", "10.213.0.2/24", "dev", "veth1")
	ipCmd(t, "-n", cliNS, "addr", "add", "10.99.0.2/24", "dev", "veth1") // a source outside AllowedClients
	ipCmd(t, "-n", cliNS, "link", "set", "veth1", "up")

	s, err := New(Options{
		Logger:         testLogger(t),
		ResolvConf:     writeResolvConf(t, ""),
		ReverseZones:   []netip.Prefix{netip.MustParsePrefix("10.213.0.0/24")},
		AllowedClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.213.0.0/24")},
		FreeBind:       true,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Without FreeBind the bridge address cannot be bound before it exists.
	plain, err := New(Options{ResolvConf: writeResolvConf(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	if err := startInNetns(t, plain, srvNS, []string{"10.213.0.1:53"}); err == nil || !strings.Contains(err.Error(), "bridge") {
		t.Fatalf("bind of an absent address without FreeBind: %v", err)
	}
	if err := startInNetns(t, s, srvNS, []string{"127.0.0.1:5353", "10.213.0.1:53"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // runs before the namespaces are deleted
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	ipCmd(t, "-n", srvNS, "addr", "add", "10.213.0.1/24", "dev", "br0")
	ipCmd(t, "-n", srvNS, "route", "add", "10.99.0.0/24", "dev", "br0")
	if err := s.Set("web", mustAddr("10.213.0.2")); err != nil {
		t.Fatal(err)
	}

	netnsDig := func(ns, server, port string, args ...string) digResult {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		full := append([]string{"netns", "exec", ns, dig, "@" + server, "-p", port,
			"+time=2", "+tries=3", "+noall", "+comments", "+answer"}, args...)
		out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(full, " "), err, out)
		}
		return parseDig(string(out))
	}
	// A guest asks the bridge address, over UDP and TCP.
	netnsDig(cliNS, "10.213.0.1", "53", "web.vm", "A").want(t, "NOERROR", "web.vm. 5 A 10.213.0.2")
	netnsDig(cliNS, "10.213.0.1", "53", "+tcp", "web.vm", "A").want(t, "NOERROR", "web.vm. 5 A 10.213.0.2")
	netnsDig(cliNS, "10.213.0.1", "53", "-x", "10.213.0.2").want(t, "NOERROR", "2.0.213.10.in-addr.arpa. 5 PTR web.vm.")
	netnsDig(cliNS, "10.213.0.1", "53", "nosuch.vm", "A").want(t, "NXDOMAIN")
	// The host asks the loopback address.
	netnsDig(srvNS, "127.0.0.1", "5353", "web.vm", "A").want(t, "NOERROR", "web.vm. 5 A 10.213.0.2")
	// A source outside AllowedClients is refused.
	netnsDig(cliNS, "10.213.0.1", "53", "-b", "10.99.0.2", "web.vm", "A").want(t, "REFUSED")
}
