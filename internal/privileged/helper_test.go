package privileged

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/netfilter"
)

// nobody is the uid of the "other user" in these tests.
const nobody = 65534

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// linksIn lists the links of the helper's namespace.
func linksIn(t *testing.T, h *helperEnv) []string {
	t.Helper()
	var names []string
	if err := inNetns(t, h.cmd.Process.Pid, func() error {
		ls, err := netlink.LinkList()
		for _, l := range ls {
			names = append(names, l.Attrs().Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

// TestHelperRefuses sends requests the helper must refuse over its real
// socket: each comes back as a refusal, is logged as one, and nothing is
// created in the helper's namespace.
func TestHelperRefuses(t *testing.T) {
	h := startHelper(t, 0)
	c := h.client()
	vms := filepath.Join(h.managed, "vms")
	vmDir := filepath.Join(vms, "vm1")
	if err := os.MkdirAll(vmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	qmp := filepath.Join(vmDir, "qmp.sock")
	other := filepath.Join(vmDir, "other.sock")
	for _, f := range []string{qmp, other} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A symlinked directory component and a symlinked leaf, both inside.
	if err := os.Symlink(vms, filepath.Join(h.managed, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/shadow", filepath.Join(vmDir, "evil.sock")); err != nil {
		t.Fatal(err)
	}
	// A sibling whose name merely starts with the managed directory's.
	evil := h.managed + "-evil"
	if err := os.MkdirAll(evil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(evil, "qmp.sock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	vmm, _ := fakeVMM(t, 0, qmp)
	nobodyVMM, _ := fakeVMM(t, nobody, qmp)
	// A process whose argv names the socket but whose binary is not a VMM.
	sh := exec.Command("/bin/sh", "-c", "sleep 60", qmp)
	sh.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sh.Process.Kill(); sh.Wait() }()
	shTarget := VMMTarget{PID: sh.Process.Pid, ControlSocket: qmp}
	self := VMMTarget{PID: os.Getpid(), ControlSocket: qmp}

	sig := func(tg VMMTarget) Request {
		return Request{Op: OpSignalVMM, Target: &tg, Signal: int(syscall.SIGTERM)}
	}
	withSock := func(p string) Request { tg := vmm; tg.ControlSocket = p; return sig(tg) }
	withStart := func(st uint64) Request { tg := vmm; tg.StartTime = st; return sig(tg) }
	gw := "172.30.9.1"
	rules := func(ip, tap string) *netfilter.VMRules {
		return &netfilter.VMRules{ID: "vm1", IP: netip.MustParseAddr(ip), Tap: tap, NAT: true}
	}

	cases := []struct {
		name string
		req  Request
		want string
	}{
		{"path outside managed dirs", withSock("/etc/passwd"), "outside banger's managed directories"},
		{"path in a sibling with the managed dir's name as prefix", withSock(filepath.Join(evil, "qmp.sock")), "outside banger's managed directories"},
		{"relative path", withSock("state/vms/vm1/qmp.sock"), "must be absolute"},
		{"symlinked directory component", withSock(filepath.Join(h.managed, "link", "vm1", "qmp.sock")), "is a symbolic link"},
		{"symlinked leaf", withSock(filepath.Join(vmDir, "evil.sock")), "is a symbolic link"},
		{"dot-dot escaping the managed dir", withSock(vms + "/../../../etc/passwd"), "not a clean path"},
		{"dot-dot staying inside", withSock(vmDir + "/../vm1/qmp.sock"), "not a clean path"},
		{"dot element", withSock(vmDir + "/./qmp.sock"), "not a clean path"},
		{"double slash", withSock(vms + "//vm1/qmp.sock"), "not a clean path"},
		{"missing path", withSock(filepath.Join(vmDir, "nope.sock")), "no such file"},
		{"foreign bridge (ensure)", Request{Op: OpEnsureBridge, Bridge: "docker0", CIDR: "172.30.9.0/24"}, "not banger's bridge"},
		{"foreign bridge (delete)", Request{Op: OpDeleteBridge, Bridge: "eth0"}, "not banger's bridge"},
		{"tap on a foreign bridge", Request{Op: OpCreateTap, Name: "bgtp01", Bridge: "virbr0"}, "not banger's bridge"},
		{"foreign tap name", Request{Op: OpDeleteTap, Name: "eth0"}, "does not match banger's tap names"},
		{"tap name that is only the prefix", Request{Op: OpCreateTap, Name: "bgtp", Bridge: "bgtestpriv0"}, "does not match"},
		{"tap renamed to a foreign name", Request{Op: OpRenameTap, Name: "bgtp01", NewName: "eth0"}, "does not match"},
		{"tap name with bad characters", Request{Op: OpDeleteTap, Name: "bgtp;rm -rf"}, "only letters"},
		{"open a foreign tap", Request{Op: OpOpenTap, Name: "eth0"}, "does not match"},
		{"list with another prefix", Request{Op: OpListTaps, Prefix: "eth"}, "does not start with the installed tap prefix"},
		{"list with a bad prefix", Request{Op: OpListTaps, Prefix: "bgtp*"}, "does not start with the installed tap prefix"},
		{"CIDR out of range", Request{Op: OpEnsureBridge, Bridge: "bgtestpriv0", CIDR: "10.0.0.0/8"}, "outside the installed range"},
		{"CIDR wider than the range", Request{Op: OpEnsureBridge, Bridge: "bgtestpriv0", CIDR: "172.30.0.0/16"}, "outside the installed range"},
		{"CIDR inside but not the installed one", Request{Op: OpEnsureBridge, Bridge: "bgtestpriv0", CIDR: "172.30.9.128/25"}, "not the installed network.cidr"},
		{"CIDR garbage", Request{Op: OpEnsureBridge, Bridge: "bgtestpriv0", CIDR: "172.30.9.0/33"}, "CIDR"},
		{"VM address out of range", Request{Op: OpFirewallApply, Rules: rules("192.168.1.5", "")}, "not a guest address"},
		{"VM address is the gateway", Request{Op: OpFirewallApply, Rules: rules(gw, "")}, "not a guest address"},
		{"VM rules with a foreign tap", Request{Op: OpFirewallApply, Rules: rules("172.30.9.5", "eth0")}, "does not match"},
		{"reconcile with one bad VM", Request{Op: OpFirewallReconcile, Desired: []netfilter.VMRules{*rules("172.30.9.5", ""), *rules("8.8.8.8", "")}}, "not a guest address"},
		{"VM id with bad characters", Request{Op: OpFirewallRemove, VMID: "vm1 or 1=1"}, "only letters"},
		{"DNS on another address", Request{Op: OpListenDNS, Addr: "127.0.0.1:53"}, "opens only 172.30.9.1:53"},
		{"DNS on another port", Request{Op: OpListenDNS, Addr: gw + ":22"}, "opens only"},
		{"disallowed signal SIGSTOP", Request{Op: OpSignalVMM, Target: &vmm, Signal: int(syscall.SIGSTOP)}, "not allowed"},
		{"disallowed signal SIGUSR1", Request{Op: OpSignalVMM, Target: &vmm, Signal: int(syscall.SIGUSR1)}, "not allowed"},
		{"signal 0", Request{Op: OpSignalVMM, Target: &vmm}, "not allowed"},
		{"pid 1", sig(VMMTarget{PID: 1, ControlSocket: qmp}), "not a VMM"},
		{"pid of the test itself", sig(self), "not a VMM binary"},
		{"pid of a shell naming the socket", sig(shTarget), "not a VMM binary"},
		{"VMM pid with a wrong start time", withStart(vmm.StartTime + 1), "not the VMM banger started"},
		{"VMM pid with another socket", withSock(other), "not the VMM banger started"},
		{"VMM pid of another uid", sig(nobodyVMM), "belongs to uid 65534"},
		{"no target", Request{Op: OpSignalVMM, Signal: int(syscall.SIGTERM)}, "without a target"},
		{"unknown operation", Request{Op: "exec"}, "unknown operation \"exec\""},
		{"empty operation", Request{}, "unknown operation"},
		{"fields the operation does not take", Request{Op: OpCreateTap, Name: "bgtp01", Bridge: "bgtestpriv0", Addr: "1.2.3.4:53"}, "does not take"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, files, err := c.Do(ctxT(t), tc.req)
			closeFiles(files)
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("want a refusal, got %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("refusal %q does not say %q", err, tc.want)
			}
		})
	}
	// Also Check alone, the same way the helper runs it.
	if err := Check(h.policy, withStart(vmm.StartTime+1)); !errors.Is(err, ErrRefused) {
		t.Errorf("Check: %v", err)
	}

	// A request with a field the wire does not have, and garbage.
	for _, raw := range []string{`{"op":"ping","cmd":"rm -rf /"}`, `not json`} {
		resp := rawRequest(t, h.policy.SocketPath(), raw)
		if !resp.Refused || !strings.Contains(resp.Error, "malformed request") {
			t.Errorf("raw %q: got %+v", raw, resp)
		}
	}

	// Nothing was done: the namespace has only lo, the VMMs still run.
	if got := linksIn(t, h); len(got) != 1 || got[0] != "lo" {
		t.Errorf("links after refusals: %v, want [lo]", got)
	}
	for _, tg := range []VMMTarget{vmm, nobodyVMM} {
		if err := syscall.Kill(tg.PID, 0); err != nil {
			t.Errorf("fake VMM %d: %v", tg.PID, err)
		}
	}
	// Every refusal is logged with its reason.
	log := h.waitFor(func(log string) bool {
		return strings.Count(log, "msg=refused") >= len(cases) && strings.Count(log, "refused: malformed request") >= 2
	})
	if n := strings.Count(log, "msg=refused"); n != len(cases) {
		t.Errorf("%d refusals logged, want %d; log:\n%s", n, len(cases), log)
	}
	if n := strings.Count(log, "refused: malformed request"); n != 2 {
		t.Errorf("%d malformed requests logged, want 2", n)
	}
}

// rawRequest writes raw bytes to the helper and decodes its answer.
func rawRequest(t *testing.T, socket, raw string) Response {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	uc := conn.(*net.UnixConn)
	uc.Write([]byte(raw))
	uc.CloseWrite()
	data, files, err := readWithFDs(uc)
	closeFiles(files)
	if err != nil {
		t.Fatal(err)
	}
	var r Response
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("response %q: %v", data, err)
	}
	return r
}

// TestHelperChecksPeerUID runs clients as other uids through the real
// socket: the helper reads SO_PEERCRED and serves only the policy's owner,
// even when the socket's mode would let anyone connect.
func TestHelperChecksPeerUID(t *testing.T) {
	// Owner root: a client running as nobody is refused.
	h := startHelper(t, 0)
	if err := os.Chmod(h.policy.SocketPath(), 0o666); err != nil { // as if the mode were loosened
		t.Fatal(err)
	}
	r := runClientAs(t, nobody, h.policy.SocketPath(), Request{Op: OpPing})
	if !r.Response.Refused || !strings.Contains(r.Err, "uid 65534 is not the installed owner (uid 0)") {
		t.Fatalf("nobody pinging a root-owned helper: %+v", r)
	}
	r = runClientAs(t, nobody, h.policy.SocketPath(), Request{Op: OpEnsureBridge, Bridge: "bgtestpriv0", CIDR: "172.30.9.0/24"})
	if !r.Response.Refused {
		t.Fatalf("nobody creating the bridge: %+v", r)
	}
	if got := linksIn(t, h); len(got) != 1 {
		t.Fatalf("links after a refused peer: %v", got)
	}
	if log := h.waitLog("refused: peer is not the owner"); !strings.Contains(log, "refused: peer is not the owner") {
		t.Errorf("refusal not logged:\n%s", log)
	}

	// Owner nobody: nobody is served (and its tap is its own), root is not.
	h2 := startHelper(t, nobody)
	sock := h2.policy.SocketPath()
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != nobody {
		t.Fatalf("socket %s: mode/owner wrong: %v %v", sock, st.Mode(), err)
	}
	if r := runClientAs(t, nobody, sock, Request{Op: OpPing}); r.Err != "" || r.Response.Version != ProtocolVersion {
		t.Fatalf("owner ping: %+v", r)
	}
	for _, req := range []Request{
		{Op: OpEnsureBridge, Bridge: "bgtestpriv0", CIDR: "172.30.9.0/24"},
		{Op: OpCreateTap, Name: "bgtp01", Bridge: "bgtestpriv0"},
	} {
		if r := runClientAs(t, nobody, sock, req); r.Err != "" {
			t.Fatalf("owner %s: %s", req.Op, r.Err)
		}
	}
	if err := inNetns(t, h2.cmd.Process.Pid, func() error {
		l, err := netlink.LinkByName("bgtp01")
		if err != nil {
			return err
		}
		tap, ok := l.(*netlink.Tuntap)
		if !ok || tap.Owner != nobody {
			t.Errorf("tap bgtp01: %#v, want a tap owned by %d", l, nobody)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Root is not the owner either (the socket's mode admits root; the uid check does not).
	_, _, err := h2.client().Do(ctxT(t), Request{Op: OpPing})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "uid 0 is not the installed owner (uid 65534)") {
		t.Fatalf("root pinging a nobody-owned helper: %v", err)
	}
}

// TestHelperOperations runs every allowed operation through the helper
// and checks its effect in the helper's namespace.
func TestHelperOperations(t *testing.T) {
	h := startHelper(t, 0)
	c := h.client()
	ctx := ctxT(t)
	cidr := netip.MustParsePrefix("172.30.9.0/24")
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\nhelper log:\n%s", what, err, h.logText())
		}
	}
	must("ensure bridge", c.EnsureBridge(ctx, "bgtestpriv0", cidr))
	must("ensure bridge again", c.EnsureBridge(ctx, "bgtestpriv0", cidr))
	must("create tap", c.CreateTap(ctx, "bgtp01", "bgtestpriv0"))
	must("create tap 2", c.CreateTap(ctx, "bgtp02", "bgtestpriv0"))
	must("rename tap", c.RenameTap(ctx, "bgtp02", "bgtp03"))
	taps, err := c.ListTaps(ctx, "bgtp")
	must("list taps", err)
	if strings.Join(taps, ",") != "bgtp01,bgtp03" {
		t.Fatalf("taps %v, want [bgtp01 bgtp03]", taps)
	}
	if err := inNetns(t, h.cmd.Process.Pid, func() error {
		l, err := netlink.LinkByName("bgtp03")
		if err != nil {
			return err
		}
		if l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().MasterIndex == 0 {
			t.Errorf("renamed tap is not up on the bridge: %+v", l.Attrs())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// open_tap: a descriptor attached to the existing tap comes back.
	tf, err := c.OpenTap(ctx, "bgtp01")
	must("open tap", err)
	ifr, err := unix.NewIfreq("")
	must("ifreq", err)
	must("TUNGETIFF", unix.IoctlIfreq(int(tf.Fd()), unix.TUNGETIFF, ifr))
	if ifr.Name() != "bgtp01" || ifr.Uint16()&unix.IFF_TAP == 0 {
		t.Fatalf("passed descriptor is attached to %q flags %#x, want tap bgtp01", ifr.Name(), ifr.Uint16())
	}
	tf.Close()
	if _, err := c.OpenTap(ctx, "bgtp99"); err == nil || errors.Is(err, ErrRefused) {
		t.Fatalf("open of a missing tap: %v, want an operation error", err)
	}

	vm := netfilter.VMRules{ID: "vm1", Name: "one", IP: netip.MustParseAddr("172.30.9.2"), Tap: "bgtp01", NAT: true}
	must("firewall apply", c.FirewallApply(ctx, vm))
	vm2 := netfilter.VMRules{ID: "vm2", IP: netip.MustParseAddr("172.30.9.3"), Tap: "bgtp03"}
	must("firewall reconcile", c.FirewallReconcile(ctx, []netfilter.VMRules{vm, vm2}))
	fwVMs := func() []string {
		var ids []string
		if err := inNetns(t, h.cmd.Process.Pid, func() error {
			m, err := netfilter.New(h.policy.FirewallConfig())
			if err != nil {
				return err
			}
			ids, err = m.VMs()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if got := strings.Join(fwVMs(), ","); got != "vm1,vm2" {
		t.Fatalf("firewall VMs %q, want vm1,vm2", got)
	}
	must("firewall remove", c.FirewallRemove(ctx, "vm1"))
	if got := strings.Join(fwVMs(), ","); got != "vm2" {
		t.Fatalf("firewall VMs after remove %q, want vm2", got)
	}

	// The DNS socket: opened by the helper in its namespace, used here.
	gw := netip.AddrPortFrom(netip.MustParseAddr("172.30.9.1"), 53)
	pc, ln, err := c.ListenDNS(ctx, gw)
	must("listen dns", err)
	defer pc.Close()
	defer ln.Close()
	if got := pc.LocalAddr().String(); got != gw.String() {
		t.Errorf("udp socket on %s, want %s", got, gw)
	}
	if got := ln.Addr().String(); got != gw.String() {
		t.Errorf("tcp listener on %s, want %s", got, gw)
	}
	if err := inNetns(t, h.cmd.Process.Pid, func() error {
		lo, err := netlink.LinkByName("lo") // local delivery needs lo up
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		u, err := net.Dial("udp", gw.String())
		if err != nil {
			return err
		}
		defer u.Close()
		_, err = u.Write([]byte("query"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "query" {
		t.Fatalf("read on the passed UDP socket: %q %v", buf[:n], err)
	}

	// Signals: an allowed one reaches the verified VMM.
	vmDir := filepath.Join(h.managed, "vms", "vm1")
	must("mkdir", os.MkdirAll(vmDir, 0o755))
	qmp := filepath.Join(vmDir, "qmp.sock")
	must("socket file", os.WriteFile(qmp, nil, 0o600))
	target, exited := fakeVMM(t, 0, qmp)
	must("signal vmm", c.SignalVMM(ctx, target, syscall.SIGTERM))
	select {
	case st := <-exited:
		if ws := st.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
			t.Fatalf("fake VMM exit: %v, want killed by SIGTERM", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fake VMM still running after SIGTERM")
	}
	// Once gone, its pid is no longer a VMM banger started.
	if err := c.SignalVMM(ctx, target, syscall.SIGKILL); !errors.Is(err, ErrRefused) {
		t.Fatalf("signal to an exited VMM: %v", err)
	}

	must("firewall teardown", c.FirewallTeardown(ctx))
	if got := fwVMs(); len(got) != 0 {
		t.Fatalf("firewall VMs after teardown: %v", got)
	}
	must("delete tap", c.DeleteTap(ctx, "bgtp01"))
	must("delete tap", c.DeleteTap(ctx, "bgtp03"))
	must("delete missing tap", c.DeleteTap(ctx, "bgtp03"))
	must("delete bridge", c.DeleteBridge(ctx, "bgtestpriv0"))
	if got := linksIn(t, h); len(got) != 1 || got[0] != "lo" {
		t.Fatalf("links after deleting: %v", got)
	}
	log := h.waitLog("op=" + OpDeleteBridge)
	for _, op := range []string{OpEnsureBridge, OpCreateTap, OpRenameTap, OpOpenTap, OpListTaps, OpFirewallApply, OpFirewallReconcile,
		OpFirewallRemove, OpListenDNS, OpSignalVMM, OpFirewallTeardown, OpDeleteTap, OpDeleteBridge} {
		if !strings.Contains(log, `msg="operation done" peer_uid=0`) || !strings.Contains(log, "op="+op) {
			t.Errorf("operation %s not logged", op)
		}
	}
}
