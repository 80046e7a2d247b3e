package privileged

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/dnsserver"
	"banger/internal/hostnet"
	"banger/internal/netfilter"
	"banger/internal/vmm/proc"
)

// Local performs the operations in this process, which must be root (or
// hold CAP_NET_ADMIN and CAP_NET_BIND_SERVICE). It trusts its caller: the
// root helper runs Check before it. The zero Local (TapOwner 0, no
// firewall) does the bridge, tap, DNS and signal operations; the firewall
// operations need NewLocal.
type Local struct {
	// Firewall is the nftables policy (bridge, CIDR, tap prefix, ...).
	Firewall netfilter.Config
	// TapOwner is the uid that may open the taps; -1: root only.
	TapOwner int
	// OpenTaps makes OpenTap open taps (the root helper); otherwise it
	// returns nil and the VMM opens its tap by name.
	OpenTaps bool

	mu sync.Mutex
	fw *netfilter.Manager
}

var _ Ops = (*Local)(nil)

// NewLocal returns the in-process backend. The firewall config is validated now.
func NewLocal(fw netfilter.Config, tapOwner int) (*Local, error) {
	m, err := netfilter.New(fw)
	if err != nil {
		return nil, err
	}
	return &Local{Firewall: fw, TapOwner: tapOwner, fw: m}, nil
}

// errNoFirewall is returned by the firewall operations of a Local made without NewLocal.
var errNoFirewall = errors.New("no firewall configured (privileged.Local made without NewLocal)")

func (l *Local) manager() (*netfilter.Manager, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fw == nil {
		return nil, errNoFirewall
	}
	return l.fw, nil
}

func (l *Local) EnsureBridge(_ context.Context, bridge string, cidr netip.Prefix) error {
	return hostnet.EnsureBridge(hostnet.Config{Bridge: bridge, CIDR: cidr, TapPrefix: l.Firewall.TapPrefix})
}

func (l *Local) DeleteBridge(_ context.Context, bridge string) error {
	return hostnet.DeleteBridge(bridge)
}

func (l *Local) CreateTap(_ context.Context, name, bridge string) error {
	return hostnet.CreateTap(name, bridge, l.TapOwner)
}

func (l *Local) DeleteTap(_ context.Context, name string) error { return hostnet.DeleteTap(name) }

// RenameTap renames a tap, keeping it on its bridge and up (hostnet.RenameTap).
func (l *Local) RenameTap(_ context.Context, from, to string) error {
	return hostnet.RenameTap(from, to)
}

// OpenTap opens /dev/net/tun attached to the existing tap name (with the
// flags it was created with), or returns nil, nil unless l.OpenTaps.
func (l *Local) OpenTap(_ context.Context, name string) (*os.File, error) {
	if !l.OpenTaps {
		return nil, nil
	}
	if err := hostnet.ValidateName("tap", name); err != nil {
		return nil, err
	}
	runtime.LockOSThread() // the tun device binds to the thread's namespace
	defer runtime.UnlockOSThread()
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("open tap %q: %w", name, err)
	}
	if t, ok := link.(*netlink.Tuntap); !ok || t.Mode != netlink.TUNTAP_MODE_TAP {
		return nil, fmt.Errorf("link %q is a %s device, not a tap; not opening it", name, link.Type())
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tap %q: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(hostnet.TapFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %q: TUNSETIFF: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

func (l *Local) ListTaps(_ context.Context, prefix string) ([]string, error) {
	return hostnet.ListLinks(prefix)
}

func (l *Local) FirewallApply(_ context.Context, rules netfilter.VMRules) error {
	m, err := l.manager()
	if err != nil {
		return err
	}
	return m.Apply(rules)
}

func (l *Local) FirewallRemove(_ context.Context, vmID string) error {
	m, err := l.manager()
	if err != nil {
		return err
	}
	return m.Remove(vmID)
}

func (l *Local) FirewallReconcile(_ context.Context, desired []netfilter.VMRules) error {
	m, err := l.manager()
	if err != nil {
		return err
	}
	return m.Reconcile(desired)
}

func (l *Local) FirewallTeardown(context.Context) error {
	m, err := l.manager()
	if err != nil {
		return err
	}
	return m.Teardown()
}

func (l *Local) ListenDNS(ctx context.Context, addr netip.AddrPort) (net.PacketConn, net.Listener, error) {
	return dnsserver.Bind(ctx, addr, true)
}

// SignalVMM opens a pidfd for the pid, verifies the process (start time and
// control socket in its argv) through it, and signals the pidfd, so a pid
// recycled in between is never signalled.
func (l *Local) SignalVMM(_ context.Context, t VMMTarget, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(t.PID, 0)
	if err != nil {
		return fmt.Errorf("signal VMM pid %d: %w", t.PID, proc.ErrGone)
	}
	defer unix.Close(fd)
	if err := proc.Verify(t.PID, t.StartTime, t.ControlSocket); err != nil {
		return fmt.Errorf("signal VMM pid %d: %w", t.PID, err)
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
		return fmt.Errorf("signal VMM pid %d: %w", t.PID, err)
	}
	return nil
}
