package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
)

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestLifecycle walks one VM through create → ssh → stop → set → start →
// restart → kill → delete and checks what each step promises.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.registerImage()
	base := filepath.Join(guestDir, "rootfs.ext4")
	baseSum := fileSHA256(t, base)
	release, err := os.ReadFile(filepath.Join(guestDir, "kernel-release"))
	if err != nil {
		t.Fatal(err)
	}

	e.must("vm", "create", "--name", "life")
	v := e.show("life")
	if v.State != api.StateRunning || v.Accel != "tcg" || v.RootBackend != "qcow2" || v.BootID == "" {
		t.Fatalf("after create: %+v", v)
	}
	for _, st := range []string{"resolve image", "prepare disks", "network", "launch VMM", "wait for guest"} {
		found := false
		for _, s := range v.Stages {
			found = found || (s.Name == st && s.State == "done")
		}
		if !found {
			t.Errorf("vm show has no timing for stage %q: %+v", st, v.Stages)
		}
	}
	if got := strings.TrimSpace(e.ssh("life", "uname", "-r")); got != strings.TrimSpace(string(release)) {
		t.Fatalf("uname -r = %q, want %q", got, release)
	}
	if got := strings.TrimSpace(e.ssh("life", "hostname")); got != "life" {
		t.Fatalf("guest hostname %q, want life", got)
	}
	// Arguments reach the guest exactly; the exit status comes back.
	if got := e.ssh("life", "printf", "%s|", "a b", "c"); got != "a b|c|" {
		t.Fatalf("argv not passed exactly: %q", got)
	}
	if r := e.run("vm", "ssh", "life", "--", "sh", "-c", "exit 42"); r.code != 42 {
		t.Fatalf("vm ssh exit code %d, want 42 (stderr %s)", r.code, r.stderr)
	}
	e.ssh("life", "sh", "-c", "echo in-root > /root/marker && echo in-slash > /marker && sync")
	vmmPID := v.PID

	e.must("vm", "stop", "life")
	v = e.show("life")
	if v.State != api.StateStopped || v.PID != 0 {
		t.Fatalf("after stop: %+v", v)
	}
	if alive(vmmPID) {
		t.Fatalf("VMM pid %d still alive after stop", vmmPID)
	}
	if taps := e.vmTaps(); len(taps) != 0 {
		t.Fatalf("taps after stop: %v", taps)
	}
	// The guest was asked through its agent (not SSH, not the power button)
	// and powered itself off.
	daemonLog, _ := os.ReadFile(filepath.Join(e.stateDir(), "bangerd.log"))
	for _, want := range []string{`msg="guest asked to power off" vm=life via=agent`, `msg="vm stopped" vm=life how="guest powered off"`} {
		if !strings.Contains(string(daemonLog), want) {
			t.Fatalf("daemon log lacks %q:\n%s", want, lastLines(string(daemonLog), 20))
		}
	}

	// Resources of a stopped VM can change; the work disk only grows.
	if r := e.run("vm", "set", "life", "--work-size", "512MiB"); r.code == 0 || !strings.Contains(r.stderr, "only grow") {
		t.Fatalf("shrinking the work disk: exit %d, %s", r.code, r.stderr)
	}
	e.must("vm", "set", "life", "--vcpu", "2", "--memory", "640MiB", "--work-size", "2GiB")

	e.must("vm", "start", "life")
	out := e.ssh("life", "sh", "-c", "cat /root/marker /marker; nproc; df -k --output=size /root | tail -1; grep MemTotal /proc/meminfo")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 5 || lines[0] != "in-root" || lines[1] != "in-slash" || lines[2] != "2" {
		t.Fatalf("after start (files, nproc): %q", out)
	}
	if kb := atoi(strings.TrimSpace(lines[3])); kb < 1800*1024 {
		t.Fatalf("/root is %d KiB after growing the work disk to 2GiB", kb)
	}
	if memKB := atoi(strings.Fields(lines[4])[1]); memKB < 500*1024 || memKB > 640*1024 {
		t.Fatalf("guest MemTotal %d KiB, want about 640MiB", memKB)
	}
	boot2 := e.show("life").BootID

	e.must("vm", "restart", "life")
	boot3 := e.show("life").BootID
	guestBoot := strings.TrimSpace(e.ssh("life", "cat", "/proc/sys/kernel/random/boot_id"))
	if boot3 == boot2 || boot3 != guestBoot {
		t.Fatalf("restart: boot ids before %s, after %s, guest says %s", boot2, boot3, guestBoot)
	}
	logs := e.must("vm", "logs", "life")
	assertContains(t, "vm logs", logs, "Linux version")
	assertContains(t, "vm logs (the guest agent started)", logs, "banger-agent: ready")

	pid := e.show("life").PID
	e.must("vm", "kill", "life")
	if v := e.show("life"); v.State != api.StateStopped || alive(pid) {
		t.Fatalf("after kill: state %s, pid %d alive %v", v.State, pid, alive(pid))
	}
	if r := e.run("vm", "kill", "life"); r.code == 0 || !strings.Contains(r.stderr, "not running") {
		t.Fatalf("kill of a stopped VM: exit %d %s", r.code, r.stderr)
	}

	dir := filepath.Join(e.stateDir(), "vms", v.ID)
	e.must("vm", "delete", "life")
	if r := e.run("vm", "show", "life"); r.code == 0 || !strings.Contains(r.stderr, `no VM named "life"`) {
		t.Fatalf("show after delete: exit %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("VM directory %s remains after delete", dir)
	}
	if kh, _ := os.ReadFile(filepath.Join(e.stateDir(), "ssh/known_hosts")); strings.Contains(string(kh), "life.vm") {
		t.Fatalf("known_hosts still pins life.vm after delete")
	}
	if got := fileSHA256(t, base); got != baseSum {
		t.Fatalf("the base image changed: %s → %s", baseSum, got)
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}
