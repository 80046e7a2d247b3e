package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/config"
	"banger/internal/hostnet"
	"banger/internal/privileged"
)

// testUser creates an unprivileged user with a test-prefixed name and
// removes it at the end (after every other cleanup of the test), even on
// failure.
func testUser(t *testing.T) (name string, uid, gid int) {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name = "bgt-u-" + hex.EncodeToString(b)
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
		"--user-group", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v %s", name, err, out)
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return name, uid, gid
}

func procUID(t *testing.T, pid int) int {
	t.Helper()
	st, err := os.Stat("/proc/" + strconv.Itoa(pid))
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	return int(st.Sys().(*syscall.Stat_t).Uid)
}

// TestUnprivilegedDaemon runs bangerd as an ordinary user created for the
// test, with bangerd-root as root in the scenario's namespace: a VM is
// created, runs a command and is deleted, every privileged step going
// through the helper; the user is refused anything outside the allow-list.
func TestUnprivilegedDaemon(t *testing.T) {
	t.Parallel()
	name, uid, gid := testUser(t)
	// The user must reach its home and the binaries under the suite's root.
	if err := os.Chmod(testRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	helperDir := filepath.Join(testRoot, "helper-"+hex.EncodeToString(b)) // not under the env's home
	if err := os.MkdirAll(helperDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(helperDir, "run", "helper.sock")
	var helper *exec.Cmd
	logPath := filepath.Join(helperDir, "helper.log")
	helperLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	helperDone := make(chan struct{})
	t.Cleanup(func() { // registered before newEnv: runs after the env's cleanup deleted the VMs
		if helper == nil {
			return
		}
		helper.Process.Signal(syscall.SIGTERM)
		select {
		case <-helperDone:
		case <-time.After(10 * time.Second):
			helper.Process.Kill()
			<-helperDone
			t.Errorf("bangerd-root did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("bangerd-root log:\n%s", lastLines(helperLog(), 60))
		}
	})
	asUser := []string{"setpriv", "--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid), "--clear-groups", "--"}
	e := newEnv(t, envOpts{vars: []string{"BANGER_ROOT_HELPER=" + sock}, wrap: asUser})
	e.vars = append(e.vars, "HOME="+e.home)
	if out, err := exec.Command("chown", "-R", name+":"+name, e.home).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}

	cfg := config.Defaults()
	qemu, err := exec.LookPath(cfg.QEMU.Binary)
	if err != nil {
		t.Fatal(err)
	}
	if qemu, err = filepath.EvalSymlinks(qemu); err != nil {
		t.Fatal(err)
	}
	policy := privileged.Policy{OwnerUID: uid, Socket: sock,
		ManagedDirs: []string{e.stateDir(), filepath.Join(e.home, "cache/banger"), filepath.Join(e.home, "run/banger")},
		Bridge:      cfg.Network.Bridge, CIDR: cfg.CIDR(), TapPrefix: hostnet.DefaultTapPrefix, VMMBinaries: []string{qemu}}
	policyFile := filepath.Join(helperDir, "policy.json")
	if err := policy.Write(policyFile); err != nil {
		t.Fatal(err)
	}
	helper = exec.Command("ip", "netns", "exec", e.ns, filepath.Join(binDir, "bangerd-root"), "-policy", policyFile)
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	helper.Stdout, helper.Stderr = logf, logf
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { helper.Wait(); close(helperDone) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-helperDone:
			t.Fatalf("bangerd-root exited: %s", helperLog())
		case <-time.After(20 * time.Millisecond): // poll for the helper's socket
		}
		if time.Now().After(deadline) {
			t.Fatalf("bangerd-root made no socket in 15s: %s", helperLog())
		}
	}

	e.registerImage()
	e.must("vm", "create", "--name", "priv")
	v := e.show("priv")
	if got := procUID(t, e.daemonPID()); got != uid {
		t.Errorf("bangerd runs as uid %d, want %d", got, uid)
	}
	if got := procUID(t, v.PID); got != uid {
		t.Errorf("the VMM runs as uid %d, want %d", got, uid)
	}
	if got := strings.TrimSpace(e.ssh("priv", "echo", "hello from an unprivileged daemon")); got != "hello from an unprivileged daemon" {
		t.Fatalf("guest command output %q", got)
	}
	e.must("vm", "delete", "--force", "priv")
	if taps := e.vmTaps(); len(taps) != 0 {
		t.Fatalf("taps left after delete: %v", taps)
	}
	log := helperLog()
	// The pool's taps are made by the helper; the VM's came from the pool
	// (a rename) and reached QEMU as a descriptor.
	for _, op := range []string{privileged.OpEnsureBridge, privileged.OpFirewallReconcile, privileged.OpListenDNS,
		privileged.OpCreateTap, privileged.OpRenameTap, privileged.OpOpenTap, privileged.OpFirewallApply,
		privileged.OpFirewallRemove, privileged.OpDeleteTap} {
		if !strings.Contains(log, `msg="operation done" peer_uid=`+strconv.Itoa(uid)) || !strings.Contains(log, "op="+op) {
			t.Errorf("the helper did not log %s for uid %d", op, uid)
		}
	}

	// Outside the allow-list, as the daemon's user: every request refused,
	// and nothing created.
	for _, raw := range []string{
		`{"op":"exec","name":"/bin/sh"}`,
		`{"op":"create_tap","name":"eth0","bridge":"` + cfg.Network.Bridge + `"}`,
		`{"op":"ensure_bridge","bridge":"docker0","cidr":"` + cfg.CIDR().String() + `"}`,
		`{"op":"ensure_bridge","bridge":"` + cfg.Network.Bridge + `","cidr":"10.0.0.0/8"}`,
		`{"op":"delete_tap","name":"lo"}`,
		`{"op":"listen_dns","addr":"127.0.0.1:53"}`,
		`{"op":"signal_vmm","target":{"pid":1,"start_time":1,"control_socket":"/etc/passwd"},"signal":9}`,
		`{"op":"signal_vmm","target":{"pid":` + strconv.Itoa(os.Getpid()) + `,"start_time":1,"control_socket":"` + e.stateDir() + `/../../../../etc/passwd"},"signal":15}`,
		`{"op":"firewall_apply","rules":{"ID":"x","IP":"8.8.8.8","NAT":true}}`,
	} {
		c := exec.Command(asUser[0], append(asUser[1:], filepath.Join(binDir, "helperclient"), sock, raw)...)
		out, err := c.Output()
		if err != nil {
			t.Fatalf("helperclient %s: %v", raw, err)
		}
		var r struct {
			Refused bool   `json:"refused"`
			Error   string `json:"error"`
		}
		if err := json.Unmarshal(out, &r); err != nil || !r.Refused {
			t.Errorf("request %s as uid %d: %s (want a refusal)", raw, uid, out)
		}
	}
	var links []string
	for _, l := range e.links("") {
		if !(hostnet.Config{}).IsPoolTap(l) {
			links = append(links, l)
		}
	}
	if strings.Join(links, ",") != "lo,"+cfg.Network.Bridge {
		t.Errorf("links after refused requests (pool taps aside): %v", links)
	}
	// root is not the owner either: the helper serves only the installed uid.
	out, _ := exec.Command(filepath.Join(binDir, "helperclient"), sock, `{"op":"ping"}`).Output()
	if !bytes.Contains(out, []byte(`"refused":true`)) || !bytes.Contains(out, []byte("uid 0 is not the installed owner")) {
		t.Errorf("root's ping: %s", out)
	}
}
