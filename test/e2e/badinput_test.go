package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBadInput checks that bad requests get a clear error and change nothing.
func TestBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.registerImage()
	e.must("vm", "create", "--name", "taken", "--no-start")
	if v := e.show("taken"); v.State != "stopped" {
		t.Fatalf("--no-start VM is %s", v.State)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"uppercase name", []string{"--name", "Bad_Name"}, "not a DNS label"},
		{"leading dash", []string{"--name=-x"}, "not a DNS label"},
		{"too long", []string{"--name", strings.Repeat("a", 64)}, "limit is 63"},
		{"duplicate", []string{"--name", "taken"}, `a VM named "taken" already exists`},
		{"zero vcpu", []string{"--vcpu", "0"}, "--vcpu 0: must be at least 1"},
		{"too many vcpus", []string{"--vcpu", "4096"}, "this host has"},
		{"memory over host", []string{"--memory", "64TiB"}, "more than this host's"},
		{"bad memory", []string{"--memory", "lots"}, "--memory \"lots\""},
		{"missing image", []string{"--image", "nope"}, `no image named "nope"`},
		{"disk smaller than image", []string{"--disk-size", "1M"}, "disks can only grow"},
	}
	for _, c := range cases {
		r := e.run(append([]string{"vm", "create"}, c.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want an error containing %q", c.name, r.code, r.stderr, c.want)
		}
	}
	if vms := e.list(); len(vms) != 1 {
		t.Fatalf("bad input created rows: %+v", vms)
	}
	if d := e.vmDirs(); len(d) != 1 {
		t.Fatalf("bad input created VM directories: %v", d)
	}
	if taps := e.vmTaps(); len(taps) != 0 {
		t.Fatalf("bad input created taps: %v", taps)
	}
	if ps := processesMentioning(e.home); len(ps) != 0 {
		t.Fatalf("bad input started processes: %v", ps)
	}
	// Bad registrations.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--name", "x", "--rootfs", filepath.Join(guestDir, "vmlinuz"), "--kernel", filepath.Join(guestDir, "vmlinuz")}, "not a raw ext4"},
		{[]string{"--name", "x", "--rootfs", filepath.Join(guestDir, "rootfs.ext4"), "--kernel", filepath.Join(guestDir, "kernel-release")}, "not a kernel"},
		{[]string{"--name", "x", "--rootfs", "/nonexistent", "--kernel", filepath.Join(guestDir, "vmlinuz")}, "no such file"},
		{[]string{"--name", "default", "--rootfs", filepath.Join(guestDir, "rootfs.ext4"), "--kernel", filepath.Join(guestDir, "vmlinuz")}, "already exists"},
	} {
		r := e.run(append([]string{"image", "register"}, c.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("image register %v: exit %d %q; want %q", c.args, r.code, r.stderr, c.want)
		}
	}
	// Deleting an image in use is refused.
	if r := e.run("image", "delete", "default"); r.code == 0 || !strings.Contains(r.stderr, "used by") {
		t.Errorf("image delete in use: exit %d %q", r.code, r.stderr)
	}
	// prune deletes the stopped VM.
	if out := e.must("vm", "prune", "-f"); strings.TrimSpace(out) != "taken" {
		t.Errorf("prune output %q", out)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Fatalf("prune left VM directories: %v", d)
	}
}

// TestMalformedConfig: the daemon refuses to start on an unknown key and the
// CLI shows which key.
func TestMalformedConfig(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{config: "cpus = 4\n"})
	r := e.run("vm", "list")
	if r.code == 0 || !strings.Contains(r.stderr, "unknown key vm.cpus") {
		t.Fatalf("unknown config key: exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(e.socket()); err == nil {
		t.Fatal("a daemon with a malformed config left its socket")
	}
	if _, err := os.Stat(filepath.Join(e.stateDir(), "banger.db")); err == nil {
		t.Fatal("a daemon with a malformed config created its database")
	}
}
