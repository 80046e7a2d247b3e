package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
)

// TestRun covers `vm run` in command mode: exit status and exact argv come
// back, --rm leaves nothing, and `vm exec` reaches a kept VM.
func TestRun(t *testing.T) {
	t.Parallel()
	synced := filepath.Join(testRoot, t.Name()+"-tool.sh")
	if err := os.WriteFile(synced, []byte("#!/bin/sh\necho synced\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{config: fmt.Sprintf("[[file_sync]]\nhost = %q\nguest = \"~/bin/tool.sh\"\n\n"+
		"[[file_sync]]\nhost = \"/nonexistent/bangertest\"\nguest = \"~/missing\"\n", synced)})
	e.registerImage()

	r := e.run("vm", "run", "--rm", "--name", "gone", "--", "sh", "-c", "echo out; echo err >&2; exit 42")
	if r.code != 42 {
		t.Fatalf("vm run --rm -- sh -c 'exit 42': exit %d, want 42\nstderr: %s", r.code, r.stderr)
	}
	assertContains(t, "stdout of the guest command", r.stdout, "out\n")
	assertContains(t, "stderr of the guest command", r.stderr, "err\n")
	if vms := e.list(); len(vms) != 0 {
		t.Fatalf("vm run --rm left VMs: %+v", vms)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Fatalf("vm run --rm left VM directories: %v", d)
	}
	if taps := e.vmTaps(); len(taps) != 0 {
		t.Fatalf("vm run --rm left taps: %v", taps)
	}

	r = e.run("vm", "run", "--name", "kept", "--", "printf", "%s|", "a b", "c")
	if r.code != 0 || r.stdout != "a b|c|" {
		t.Fatalf("vm run -- printf '%%s|' 'a b' c: exit %d, stdout %q (want \"a b|c|\")\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if v := e.show("kept"); v.State != api.StateRunning || !v.Agent {
		t.Fatalf("vm run without --rm: VM is %s (agent %v), want running with the guest agent", v.State, v.Agent)
	}
	// vm exec without -i/-t goes through the agent: status, signals, both streams.
	if r := e.run("vm", "exec", "kept", "sh", "-c", "echo to-err >&2; kill -TERM $$"); r.code != 143 || r.stderr != "to-err\n" {
		t.Fatalf("vm exec of a command killed by SIGTERM: exit %d stderr %q, want 143 and to-err", r.code, r.stderr)
	}
	// [[file_sync]]: the file arrives with its mode; the missing one is a warning.
	assertContains(t, "create progress", r.stderr, "sync files done")
	assertContains(t, "create progress", r.stderr, "/nonexistent/bangertest")
	if out := e.ssh("kept", "sh", "-c", "stat -c %a /root/bin/tool.sh; /root/bin/tool.sh"); out != "750\nsynced\n" {
		t.Fatalf("file_sync in the guest: %q", out)
	}
	if r := e.run("vm", "exec", "kept", "--", "sh", "-c", "hostname; exit 7"); r.code != 7 || strings.TrimSpace(r.stdout) != "kept" {
		t.Fatalf("vm exec: exit %d stdout %q, want 7 and the hostname", r.code, r.stdout)
	}
	// vm ports: sshd, and an HTTP server started in the guest (perl comes with git).
	e.guestHTTP("kept", 8080)
	var ports []api.VMPort
	if err := json.Unmarshal([]byte(e.must("vm", "ports", "kept", "--json")), &ports); err != nil {
		t.Fatal(err)
	}
	found := map[int]api.VMPort{}
	for _, p := range ports {
		if p.Proto == "tcp" {
			found[p.Port] = p
		}
	}
	if p := found[22]; p.Endpoint != "kept.vm:22" || !p.Reachable || p.URL != "" || p.Process != "sshd" {
		t.Fatalf("vm ports: sshd entry %+v (all: %+v)", p, ports)
	}
	if p := found[8080]; p.URL != "http://kept.vm:8080/" || p.Process != "perl" {
		t.Fatalf("vm ports: HTTP entry %+v (all: %+v)", p, ports)
	}
	in := e.cmd("vm", "exec", "-i", "kept", "tr", "a-z", "A-Z")
	in.Stdin = strings.NewReader("piped through the guest\n")
	if out, err := in.Output(); err != nil || string(out) != "PIPED THROUGH THE GUEST\n" {
		t.Fatalf("vm exec -i with stdin: %q, %v", out, err)
	}
	if r := e.run("vm", "run", "--rm", "--detach"); r.code == 0 || !strings.Contains(r.stderr, "cannot be combined") {
		t.Fatalf("--rm --detach: exit %d, stderr %s", r.code, r.stderr)
	}
}

// TestRunKeepsAGuestThatNeverBecameReady: when the guest cannot come up (here
// a kernel without the initramfs that loads its disk driver panics), `vm run
// --rm` keeps the stopped VM so its console can be read.
func TestRunKeepsAGuestThatNeverBecameReady(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.must("image", "register", "--name", "noinitrd", "--rootfs", filepath.Join(guestDir, "rootfs.ext4"),
		"--kernel", filepath.Join(guestDir, "vmlinuz"))
	r := e.run("vm", "run", "--rm", "--image", "noinitrd", "--name", "broken", "--", "true")
	if r.code == 0 {
		t.Fatalf("vm run of a guest that cannot boot succeeded: %s", r.stderr)
	}
	assertContains(t, "vm run stderr", r.stderr, "vm broken was kept")
	v := e.show("broken")
	if v.State != api.StateStopped || v.LastError == "" {
		t.Fatalf("kept VM: state %s, last error %q; want stopped with the error", v.State, v.LastError)
	}
	if taps := e.vmTaps(); len(taps) != 0 {
		t.Fatalf("a kept, stopped VM still has taps: %v", taps)
	}
	if ps := processesMentioning(e.home + "/state"); len(ps) != 0 {
		t.Fatalf("a kept, stopped VM still has a VMM: %v", ps)
	}
	assertContains(t, "vm logs of the kept VM", e.must("vm", "logs", "broken"), "Kernel panic")
}
