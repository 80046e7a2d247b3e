package sysinstall

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
)

// directives parses a unit file into key -> values (in order).
func directives(unit string) map[string][]string {
	d := map[string][]string{}
	for _, line := range strings.Split(unit, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		d[k] = append(d[k], v)
	}
	return d
}

var testParams = unitParams{BinDir: "/usr/local/bin", Owner: "alice", Group: "alice",
	PolicyFile: "/etc/banger/root-helper.json", HelperSocket: "/run/banger-root/helper.sock"}

func TestUnitDirectives(t *testing.T) {
	d := directives(daemonUnit(testParams))
	want := map[string]string{
		"User": "alice", "Group": "alice", "ExecStart": "/usr/local/bin/bangerd --system",
		"KillMode": "process", "RuntimeDirectoryPreserve": "yes", "Requires": HelperUnit,
		"CapabilityBoundingSet": "", "AmbientCapabilities": "", "NoNewPrivileges": "yes",
		"ProtectSystem": "full", "ProtectHome": "read-only", "StateDirectory": "banger", "RuntimeDirectory": "banger",
		"Restart": "on-failure", "WantedBy": "multi-user.target",
	}
	for k, v := range want {
		if got := d[k]; len(got) != 1 || got[0] != v {
			t.Errorf("daemon unit %s = %q, want %q", k, got, v)
		}
	}
	if env := strings.Join(d["Environment"], " "); !strings.Contains(env, "BANGER_SYSTEM=1") ||
		!strings.Contains(env, "BANGER_ROOT_HELPER=/run/banger-root/helper.sock") {
		t.Errorf("daemon unit environment %q", env)
	}
	if _, ok := d["MemoryDenyWriteExecute"]; ok {
		t.Error("daemon unit sets MemoryDenyWriteExecute: QEMU's TCG JIT needs W+X memory")
	}
	if _, ok := d["PrivateDevices"]; ok {
		t.Error("daemon unit sets PrivateDevices: QEMU needs /dev/kvm and /dev/net/tun")
	}

	h := directives(helperUnit(testParams))
	if _, ok := h["User"]; ok {
		t.Errorf("helper unit has User=%v; it runs as root", h["User"])
	}
	caps := strings.Fields(strings.Join(h["CapabilityBoundingSet"], " "))
	wantCaps := []string{"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_CHOWN"}
	if strings.Join(caps, " ") != strings.Join(wantCaps, " ") {
		t.Errorf("helper capabilities %v, want %v", caps, wantCaps)
	}
	for k, v := range map[string]string{
		"ExecStart":     "/usr/local/bin/bangerd-root -policy /etc/banger/root-helper.json",
		"ProtectSystem": "strict", "NoNewPrivileges": "yes", "RuntimeDirectory": "banger-root",
		"MemoryDenyWriteExecute": "yes", "RestrictAddressFamilies": "AF_UNIX AF_NETLINK AF_INET AF_INET6",
		"Before": DaemonUnit,
	} {
		if got := h[k]; len(got) != 1 || got[0] != v {
			t.Errorf("helper unit %s = %q, want %q", k, got, v)
		}
	}
	if _, ok := h["ProtectKernelTunables"]; ok {
		t.Error("helper unit sets ProtectKernelTunables: it writes ip_forward and route_localnet")
	}
}

// TestUnitsPassSystemdAnalyzeVerify renders both units for an existing user
// and stand-in binaries and runs `systemd-analyze verify`, which must print
// nothing (it exits 0 even for ignored bad directives, so its output is the
// verdict; a broken unit checks that the check can fail).
func TestUnitsPassSystemdAnalyzeVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed (package systemd)")
	}
	owner := ""
	for _, name := range []string{"daemon", "bin"} { // ordinary system users ("nobody" draws a warning)
		if _, err := user.Lookup(name); err == nil {
			owner = name
			break
		}
	}
	if owner == "" {
		t.Skip("neither user daemon nor bin exists to render the daemon unit for")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	for _, b := range []string{"bangerd", "bangerd-root"} {
		writeT(t, filepath.Join(bin, b), "#!/bin/sh\n", 0o755)
	}
	p := unitParams{BinDir: bin, Owner: owner, Group: owner, PolicyFile: "/etc/banger/root-helper.json",
		HelperSocket: "/run/banger-root/helper.sock"}
	verify := func(daemon string) string {
		units := filepath.Join(dir, "units")
		os.RemoveAll(units)
		writeT(t, filepath.Join(units, HelperUnit), helperUnit(p), 0o644)
		writeT(t, filepath.Join(units, DaemonUnit), daemon, 0o644)
		out, err := exec.Command("systemd-analyze", "verify", filepath.Join(units, HelperUnit), filepath.Join(units, DaemonUnit)).CombinedOutput()
		if err != nil {
			return string(out) + err.Error()
		}
		return string(out)
	}
	if out := verify(daemonUnit(p)); out != "" {
		t.Fatalf("systemd-analyze verify:\n%s", out)
	}
	if out := verify(strings.Replace(daemonUnit(p), "KillMode=process", "KillMode=bogus", 1)); !strings.Contains(out, "kill mode") {
		t.Fatalf("a broken unit passed verify: %q", out)
	}
}
