package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDNS: the daemon answers NAME.vm on the host's loopback (real dig) and
// on the bridge address for guests, follows start/stop/delete, and rebuilds
// its records after a daemon restart.
func TestDNS(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.registerImage()
	e.must("vm", "create", "--name", "alpha")
	e.must("vm", "create", "--name", "beta")
	a, b := e.show("alpha"), e.show("beta")

	if got := e.dig("alpha.vm"); got != a.IP {
		t.Fatalf("dig alpha.vm = %q, want %s", got, a.IP)
	}
	if got := e.dig("-x", b.IP); got != "beta.vm." {
		t.Fatalf("dig -x %s = %q, want beta.vm.", b.IP, got)
	}
	// A guest resolves another guest by name through the bridge DNS.
	if out := e.ssh("alpha", "getent", "hosts", "beta.vm"); !strings.HasPrefix(out, b.IP+" ") {
		t.Fatalf("getent hosts beta.vm in alpha: %q, want %s", out, b.IP)
	}

	// The records survive a daemon restart (rebuilt from the running VMs).
	pid := e.daemonPID()
	e.must("daemon", "stop")
	if !waitGone(pid, 30*time.Second) {
		t.Fatalf("daemon %d did not exit", pid)
	}
	if got := e.dig("beta.vm"); got != "" {
		t.Fatalf("dig beta.vm with the daemon stopped answered %q", got)
	}
	e.must("vm", "list") // starts the daemon again
	if got := e.dig("beta.vm"); got != b.IP {
		t.Fatalf("dig beta.vm after a daemon restart = %q, want %s", got, b.IP)
	}

	e.must("vm", "stop", "beta")
	if got := e.dig("beta.vm"); got != "" {
		t.Fatalf("dig beta.vm of a stopped VM = %q, want no answer", got)
	}
	e.must("vm", "delete", "--force", "alpha")
	if got := e.dig("alpha.vm"); got != "" {
		t.Fatalf("dig alpha.vm after delete = %q, want no answer", got)
	}
}

// dig queries the daemon's host-side DNS server (default 127.0.0.1:5354)
// inside the scenario's namespace and returns the short answer.
func (e *env) dig(args ...string) string {
	e.t.Helper()
	argv := append([]string{"netns", "exec", e.ns, "dig", "@127.0.0.1", "-p", "5354", "+short", "+time=2", "+tries=1"}, args...)
	out, err := exec.Command("ip", argv...).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "connection refused") && !strings.Contains(string(out), "timed out") {
		e.t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
