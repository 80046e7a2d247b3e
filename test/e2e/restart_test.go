package e2e

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
)

func errorAs(err error, target any) bool { return errors.As(err, target) }

// cliPID returns the banger process started through `ip netns exec` (which
// execs in place; if a wrapper forked, its child is searched).
func cliPID(t *testing.T, pid int) int {
	t.Helper()
	if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); strings.Contains(string(b), "/banger\x00") {
		return pid
	}
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children")
	if f := strings.Fields(string(b)); len(f) > 0 {
		c, _ := strconv.Atoi(f[0])
		return c
	}
	t.Fatalf("cannot find the banger process under pid %d", pid)
	return 0
}

// TestDaemonKillAndRestart SIGKILLs the daemon with a VM running: the VM must
// survive and be adopted by the next daemon. Then it kills the daemon again,
// kills the VMM while no daemon runs, and checks the next daemon marks the VM
// stopped and removes its tap.
func TestDaemonKillAndRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.registerImage()
	e.must("vm", "create", "--name", "survivor", "--nat")
	before := e.show("survivor")
	rule := "vm=" + before.ID // the comment on each of the VM's nftables rules

	d1 := e.daemonPID()
	syscall.Kill(d1, syscall.SIGKILL)
	if !waitGone(d1, 10*time.Second) {
		t.Fatalf("daemon %d survived SIGKILL", d1)
	}
	if !alive(before.PID) {
		t.Fatalf("the VMM died with the daemon")
	}
	// The next CLI call starts a new daemon, which adopts the VM.
	after := e.show("survivor")
	if d2 := e.daemonPID(); d2 == d1 {
		t.Fatalf("daemon pid unchanged")
	}
	if after.State != api.StateRunning || after.PID != before.PID {
		t.Fatalf("after daemon restart: %+v (before pid %d)", after, before.PID)
	}
	if !strings.Contains(e.nft("list", "ruleset"), rule) {
		t.Fatalf("the adopted VM's NAT rules are missing after the daemon restart")
	}
	if got := strings.TrimSpace(e.ssh("survivor", "cat", "/proc/sys/kernel/random/boot_id")); got != before.BootID {
		t.Fatalf("guest boot_id %s, want the same boot %s", got, before.BootID)
	}
	// The adopted VM can still be stopped gracefully by the new daemon.
	e.must("vm", "stop", "survivor")
	if alive(before.PID) {
		t.Fatal("VMM alive after stop by the adopting daemon")
	}
	if strings.Contains(e.nft("list", "ruleset"), rule) {
		t.Fatal("rules of a stopped VM remain")
	}
	e.must("vm", "start", "survivor")
	running := e.show("survivor")

	// The VMM dies while no daemon runs.
	d2 := e.daemonPID()
	syscall.Kill(d2, syscall.SIGKILL)
	waitGone(d2, 10*time.Second)
	syscall.Kill(running.PID, syscall.SIGKILL)
	if !waitGone(running.PID, 10*time.Second) {
		t.Fatal("VMM survived SIGKILL")
	}
	v := e.show("survivor")
	if v.State != api.StateStopped || v.PID != 0 || !strings.Contains(v.LastError, "daemon was not running") {
		t.Fatalf("after the VMM died while the daemon was down: %+v", v)
	}
	if taps := e.vmTaps(); len(taps) != 0 {
		t.Fatalf("taps of a dead VM remain: %v", taps)
	}
	if ruleset := e.nft("list", "ruleset"); strings.Contains(ruleset, rule) {
		t.Fatalf("rules of a VM that died while the daemon was down remain:\n%s", ruleset)
	}
	e.must("vm", "start", "survivor")
	e.must("vm", "delete", "--force", "survivor")
}
