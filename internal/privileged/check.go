package privileged

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"banger/internal/hostnet"
	"banger/internal/netfilter"
	"banger/internal/vmm/proc"
)

// ErrRefused is wrapped by every refusal of Check and of the Server.
var ErrRefused = errors.New("refused by the root helper")

func refuse(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// AllowedSignals are the signals the helper sends to a VMM.
var AllowedSignals = []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL, syscall.SIGINT}

// Check decides whether the helper may run r under policy p: the operation
// must be in the allow-list, only its own fields may be set, and each of
// them must be valid and within the policy. For signal_vmm it also verifies
// the live process (see CheckVMM). A nil error means "allowed".
func Check(p Policy, r Request) error {
	// want is r reduced to the fields op reads; any other field set is refused.
	want := Request{Op: r.Op}
	var err error
	switch r.Op {
	case OpPing, OpFirewallTeardown:
	case OpEnsureBridge:
		want.Bridge, want.CIDR = r.Bridge, r.CIDR
		err = errors.Join(p.checkBridge(r.Bridge), p.checkCIDR(r.CIDR))
	case OpDeleteBridge:
		want.Bridge = r.Bridge
		err = p.checkBridge(r.Bridge)
	case OpCreateTap:
		want.Name, want.Bridge = r.Name, r.Bridge
		err = errors.Join(p.checkTap(r.Name), p.checkBridge(r.Bridge))
	case OpDeleteTap, OpOpenTap:
		want.Name = r.Name
		err = p.checkTap(r.Name)
	case OpRenameTap:
		want.Name, want.NewName = r.Name, r.NewName
		err = errors.Join(p.checkTap(r.Name), p.checkTap(r.NewName))
		if err == nil && r.Name == r.NewName {
			err = refuse("rename of tap %q to itself", r.Name)
		}
	case OpListTaps:
		want.Prefix = r.Prefix
		if !strings.HasPrefix(r.Prefix, p.tapPrefix()) || hostnet.ValidateName("tap prefix", r.Prefix) != nil {
			err = refuse("tap prefix %q does not start with the installed tap prefix %q", r.Prefix, p.tapPrefix())
		}
	case OpFirewallApply:
		want.Rules = r.Rules
		if r.Rules == nil {
			err = refuse("firewall_apply without rules")
		} else {
			err = p.checkRules(*r.Rules)
		}
	case OpFirewallRemove:
		want.VMID = r.VMID
		err = checkVMID(r.VMID)
	case OpFirewallReconcile:
		want.Desired = r.Desired
		for _, v := range r.Desired {
			err = errors.Join(err, p.checkRules(v))
		}
	case OpListenDNS:
		want.Addr = r.Addr
		err = p.checkDNSAddr(r.Addr)
	case OpSignalVMM:
		want.Target, want.Signal = r.Target, r.Signal
		err = checkSignal(r.Signal)
		if r.Target == nil {
			err = errors.Join(err, refuse("signal_vmm without a target"))
		} else if err == nil {
			err = p.CheckVMM(*r.Target)
		}
	default:
		return refuse("unknown operation %q; the helper performs only: %s", r.Op, strings.Join(AllOps(), ", "))
	}
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(want, r) {
		return refuse("operation %q given fields it does not take", r.Op)
	}
	return nil
}

// AllOps lists the allow-list.
func AllOps() []string {
	return []string{OpPing, OpEnsureBridge, OpDeleteBridge, OpCreateTap, OpDeleteTap, OpRenameTap, OpOpenTap, OpListTaps,
		OpFirewallApply, OpFirewallRemove, OpFirewallReconcile, OpFirewallTeardown, OpListenDNS, OpSignalVMM}
}

func (p Policy) checkBridge(name string) error {
	if name != p.Bridge {
		return refuse("bridge %q is not banger's bridge (%q)", name, p.Bridge)
	}
	return nil
}

func (p Policy) checkTap(name string) error {
	if err := hostnet.ValidateName("tap", name); err != nil {
		return refuse("%v", err)
	}
	pre := p.tapPrefix()
	if !strings.HasPrefix(name, pre) || len(name) == len(pre) || name == p.Bridge {
		return refuse("tap %q does not match banger's tap names (%s followed by an id)", name, pre)
	}
	return nil
}

func (p Policy) checkCIDR(s string) error {
	c, err := netip.ParsePrefix(s)
	if err != nil {
		return refuse("CIDR %q: %v", s, err)
	}
	if c.Masked() == p.CIDR.Masked() {
		return nil
	}
	if c.Bits() < p.CIDR.Bits() || !p.CIDR.Contains(c.Addr()) {
		return refuse("CIDR %s is outside the installed range %s", s, p.CIDR)
	}
	return refuse("CIDR %s is not the installed network.cidr %s; after changing network.cidr run `banger system install` again", s, p.CIDR)
}

func (p Policy) checkRules(v netfilter.VMRules) error {
	if err := checkVMID(v.ID); err != nil {
		return err
	}
	if !p.CIDR.Contains(v.IP) || v.IP == hostnet.Gateway(p.CIDR) {
		return refuse("VM %s: address %s is not a guest address of %s", v.ID, v.IP, p.CIDR)
	}
	if v.Tap != "" {
		if err := p.checkTap(v.Tap); err != nil {
			return err
		}
	}
	for _, pm := range v.Publish {
		if err := pm.Validate(); err != nil {
			return refuse("VM %s: %v", v.ID, err)
		}
	}
	return nil
}

func checkVMID(id string) error {
	if id == "" || len(id) > 64 {
		return refuse("VM id %q: 1-64 characters", id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return refuse("VM id %q: only letters, digits, '.', '_' and '-'", id)
		}
	}
	return nil
}

func (p Policy) checkDNSAddr(s string) error {
	want := netip.AddrPortFrom(hostnet.Gateway(p.CIDR), 53)
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap != want {
		return refuse("DNS listen address %q: the helper opens only %s (the bridge address, port 53)", s, want)
	}
	return nil
}

func checkSignal(n int) error {
	if slices.Contains(AllowedSignals, syscall.Signal(n)) {
		return nil
	}
	var names []string
	for _, s := range AllowedSignals {
		names = append(names, s.String())
	}
	return refuse("signal %d is not allowed (allowed: %s)", n, strings.Join(names, ", "))
}

// CheckPath verifies that path names something inside one of the managed
// directories: absolute, clean (no "..", "." or "//" elements), under a
// managed directory, existing, and with no symbolic link in any component
// from the managed directory down (each is checked with Lstat).
func (p Policy) CheckPath(path string) error {
	if !filepath.IsAbs(path) || strings.ContainsRune(path, 0) {
		return refuse("path %q: must be absolute", path)
	}
	if filepath.Clean(path) != path {
		return refuse("path %q: not a clean path (it has '..', '.', '//' or a trailing '/'); give the resolved path", path)
	}
	var root string
	for _, d := range p.ManagedDirs {
		if path == d || strings.HasPrefix(path, d+"/") {
			root = d
			break
		}
	}
	if root == "" {
		return refuse("path %q is outside banger's managed directories (%s)", path, strings.Join(p.ManagedDirs, ", "))
	}
	cur := root
	rest := strings.Split(strings.TrimPrefix(path[len(root):], "/"), "/")
	if path == root {
		rest = nil
	}
	for i := -1; i < len(rest); i++ {
		if i >= 0 {
			cur = filepath.Join(cur, rest[i])
		}
		st, err := os.Lstat(cur)
		if err != nil {
			return refuse("path %q: %v", path, err)
		}
		if st.Mode()&os.ModeSymlink != 0 {
			return refuse("path %q: component %s is a symbolic link", path, cur)
		}
		if i < len(rest)-1 && !st.IsDir() {
			return refuse("path %q: component %s is not a directory", path, cur)
		}
	}
	return nil
}

// CheckVMM verifies that t is a VMM process banger launched: the control
// socket path is a managed path; /proc/PID/exe is one of the policy's VMM
// binaries; the process belongs to the owner (or root, when the owner is
// root); its start time is the recorded one (a recycled pid differs); and
// its argv references the control socket.
func (p Policy) CheckVMM(t VMMTarget) error {
	if t.PID <= 1 {
		return refuse("pid %d is not a VMM", t.PID)
	}
	if err := p.CheckPath(t.ControlSocket); err != nil {
		return err
	}
	dir := "/proc/" + strconv.Itoa(t.PID)
	exe, err := os.Readlink(dir + "/exe")
	if err != nil {
		return refuse("pid %d: %v", t.PID, err)
	}
	if !slices.Contains(p.VMMBinaries, exe) {
		return refuse("pid %d runs %s, not a VMM binary of the policy (%s)", t.PID, exe, strings.Join(p.VMMBinaries, ", "))
	}
	st, err := os.Stat(dir)
	if err != nil {
		return refuse("pid %d: %v", t.PID, err)
	}
	if uid := int(st.Sys().(*syscall.Stat_t).Uid); uid != p.OwnerUID {
		return refuse("pid %d belongs to uid %d, not the owner %d", t.PID, uid, p.OwnerUID)
	}
	if err := proc.Verify(t.PID, t.StartTime, t.ControlSocket); err != nil {
		return refuse("pid %d is not the VMM banger started with start time %d and control socket %s", t.PID, t.StartTime, t.ControlSocket)
	}
	return nil
}
