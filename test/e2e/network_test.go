package e2e

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
)

// httpdPerl is a one-response-per-connection HTTP server (perl comes with
// git in the guest and with Debian on the host).
const httpdPerl = `use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalAddr => $ARGV[0], Listen => 5, ReuseAddr => 1) or die $!;
while (my $c = $s->accept) { my $l = <$c>; print $c "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"; close $c }`

// guestHTTP starts httpdPerl in the guest on port and returns once it listens.
func (e *env) guestHTTP(vm string, port int) {
	e.t.Helper()
	e.must("vm", "exec", vm, "sh", "-c", `nohup perl -e "$1" "0.0.0.0:$2" >/dev/null 2>&1 &
		hex=$(printf ':%04X ' "$2")
		for i in $(seq 100); do grep -q "$hex" /proc/net/tcp && exit 0; sleep 0.1; done; exit 1`, "sh", httpdPerl, strconv.Itoa(port))
}

// TestNetwork: --nat reaches an "upstream" namespace and a VM without it
// cannot; guests cannot reach each other; -p publishes a guest port on the
// host's loopback; rules go with the VM and other tables are untouched.
func TestNetwork(t *testing.T) {
	t.Parallel()
	// The daemon forwards names outside .vm to a resolver in the upstream namespace.
	e := newEnv(t, envOpts{config: "[network]\ndns_upstreams = [\"172.31.250.2\"]\n"})
	up := e.upstream(t)
	nft := e.nft
	nft("add", "table", "inet", "bangertest_foreign")
	nft("add", "chain", "inet", "bangertest_foreign", "input", "{ type filter hook input priority 10; policy accept; }")
	nft("add", "rule", "inet", "bangertest_foreign", "input", "tcp", "dport", "9", "counter", "accept")
	foreignBefore := nft("list", "table", "inet", "bangertest_foreign")

	e.registerImage()
	e.must("vm", "create", "--name", "natty", "--nat")
	e.must("vm", "create", "--name", "plain", "-p", "127.0.0.1:18080:8080")
	natty, plain := e.show("natty"), e.show("plain")
	if !natty.NAT || len(plain.Publish) != 1 {
		t.Fatalf("vm show: natty nat=%v, plain publish=%v", natty.NAT, plain.Publish)
	}

	get := `exec 3<>"/dev/tcp/$1/$2" && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && head -c 15 <&3`
	if out := e.ssh("natty", "timeout", "10", "bash", "-c", get, "bash", up, "8000"); out != "HTTP/1.0 200 OK" {
		t.Fatalf("a --nat guest fetching from upstream got %q", out)
	}
	if r := e.run("vm", "ssh", "plain", "--", "timeout", "5", "bash", "-c", get, "bash", up, "8000"); r.code == 0 {
		t.Fatalf("a guest without --nat reached upstream: %q", r.stdout)
	}
	// A guest resolves an upstream name through the bridge DNS, and another guest by name.
	if out := e.ssh("plain", "getent", "hosts", "upstream.bangertest"); !strings.HasPrefix(out, up+" ") {
		t.Fatalf("getent hosts upstream.bangertest in a guest: %q, want %s", out, up)
	}
	if out := e.ssh("plain", "getent", "hosts", "natty.vm"); !strings.HasPrefix(out, natty.IP+" ") {
		t.Fatalf("getent hosts natty.vm in a guest: %q, want %s", out, natty.IP)
	}
	if r := e.run("vm", "ssh", "natty", "--", "timeout", "5", "bash", "-c", `exec 3<>"/dev/tcp/$1/22"`, "bash", plain.IP); r.code == 0 {
		t.Fatal("a guest reached another guest's sshd; guests must be isolated by default")
	}

	// -p 127.0.0.1:18080:8080 serves the guest's port 8080 on the host.
	e.guestHTTP("plain", 8080)
	curl := exec.Command("ip", "netns", "exec", e.ns, "curl", "-sS", "--max-time", "10", "http://127.0.0.1:18080/")
	if out, err := curl.CombinedOutput(); err != nil || string(out) != "ok" {
		t.Fatalf("curl of the published port: %v %q", err, out)
	}
	if r := e.run("vm", "create", "--name", "clash", "-p", "127.0.0.1:18080:80"); r.code == 0 || !strings.Contains(r.stderr, "already publishes") {
		t.Fatalf("a second VM on the same host port: exit %d, %s", r.code, r.stderr)
	}

	// Ports and NAT change on a running VM at once.
	e.must("vm", "port", "add", "plain", "127.0.0.1:18081:8080")
	if got := e.must("vm", "port", "list", "plain"); got != "127.0.0.1:18080:8080/tcp\n127.0.0.1:18081:8080/tcp\n" {
		t.Fatalf("vm port list: %q", got)
	}
	e.must("vm", "port", "rm", "plain", "127.0.0.1:18080:8080")
	for port, want := range map[string]bool{"18081": true, "18080": false} {
		out, err := exec.Command("ip", "netns", "exec", e.ns, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:"+port+"/").CombinedOutput()
		if got := err == nil && string(out) == "ok"; got != want {
			t.Fatalf("curl 127.0.0.1:%s after port add/rm: %v %q, want served=%v", port, err, out, want)
		}
	}
	e.must("vm", "set", "plain", "--nat=true")
	if out := e.ssh("plain", "timeout", "10", "bash", "-c", get, "bash", up, "8000"); out != "HTTP/1.0 200 OK" {
		t.Fatalf("after vm set --nat=true the guest fetched %q", out)
	}

	if r := e.run("daemon", "stop", "--cleanup"); r.code == 0 || !strings.Contains(r.stderr, "running") {
		t.Fatalf("daemon stop --cleanup with VMs running: exit %d %s", r.code, r.stderr)
	}

	// Rules go with the VM; other tables are left alone.
	e.must("vm", "delete", "--force", "natty")
	e.must("vm", "stop", "plain")
	if ruleset := nft("list", "ruleset"); strings.Contains(ruleset, "vm="+natty.ID) || strings.Contains(ruleset, "vm="+plain.ID) {
		t.Fatalf("rules of a deleted or stopped VM remain:\n%s", ruleset)
	}
	if after := nft("list", "table", "inet", "bangertest_foreign"); after != foreignBefore {
		t.Fatalf("banger changed a foreign table:\nbefore:\n%s\nafter:\n%s", foreignBefore, after)
	}

	// The daemon keeps its warm tap pool (default size 4) between VMs; it
	// refills in the background, so wait for the daemon to report it full.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var st api.DaemonStatus
		if err := e.client().Call(context.Background(), api.MethodDaemonStatus, nil, &st); err != nil {
			t.Fatal(err)
		}
		pool := e.links("bgtap-pool")
		if st.TapPool == "4/4 ready" && len(pool) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap pool not full 10 s after the last VM start: status %q, links %v", st.TapPool, pool)
		}
	}

	// daemon stop --cleanup takes banger's pool taps, tables and bridge away,
	// nothing else.
	pid := e.daemonPID()
	e.must("daemon", "stop", "--cleanup")
	waitGone(pid, 30*time.Second)
	if tables := nft("list", "tables"); strings.Contains(tables, "banger\n") || !strings.Contains(tables, "bangertest_foreign") {
		t.Fatalf("nft tables after daemon stop --cleanup:\n%s", tables)
	}
	if links := append(e.links("banger0"), e.links("bgtap")...); len(links) != 0 {
		t.Fatalf("bridge or taps left after daemon stop --cleanup: %v", links)
	}
}

// nft runs nft in the scenario's namespace and returns its output.
func (e *env) nft(args ...string) string {
	e.t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", e.ns, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// upstream makes a namespace standing for "the internet", linked to the
// scenario's namespace by a veth pair, with an HTTP server at 172.31.250.2:8000
// and a resolver (dnsmasq) on 172.31.250.2:53 that knows upstream.bangertest.
func (e *env) upstream(t *testing.T) string {
	t.Helper()
	ns := e.ns + "-up"
	veth := "bgtv" + strings.TrimPrefix(e.ns, nsPrefix)[:8]
	steps := [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", e.ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", e.ns, "addr", "add", "172.31.250.1/24", "dev", veth},
		{"-n", e.ns, "link", "set", veth, "up"},
		{"-n", ns, "addr", "add", "172.31.250.2/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", s, err, out)
		}
	}
	dns := exec.Command("ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
		"--bind-interfaces", "--listen-address=172.31.250.2", "--address=/upstream.bangertest/172.31.250.2",
		"--pid-file=", "--user=root")
	if err := dns.Start(); err != nil {
		t.Fatalf("dnsmasq (apt-get install dnsmasq-base): %v", err)
	}
	t.Cleanup(func() { dns.Process.Kill(); dns.Wait() })
	srv := exec.Command("ip", "netns", "exec", ns, "perl", "-e", httpdPerl, "172.31.250.2:8000")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	// Wait until it listens (a real condition, bounded).
	for i := 0; i < 100; i++ {
		if exec.Command("ip", "netns", "exec", ns, "sh", "-c", "grep -q ':1F40 ' /proc/net/tcp && grep -q ':0035 ' /proc/net/udp").Run() == nil {
			return "172.31.250.2"
		}
		exec.Command("sleep", "0.1").Run()
	}
	t.Fatal("the upstream HTTP server or resolver did not start listening")
	return ""
}
