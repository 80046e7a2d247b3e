package privileged

import (
	"context"
	"net"
	"net/netip"
	"os"
	"syscall"

	"banger/internal/netfilter"
)

// Ops is every root-only operation the daemon performs. Implementations are
// Local (in-process, as root) and Client (the root helper).
type Ops interface {
	// EnsureBridge creates the bridge carrying the gateway of cidr (idempotent).
	EnsureBridge(ctx context.Context, bridge string, cidr netip.Prefix) error
	// DeleteBridge deletes the bridge (a missing one is not an error).
	DeleteBridge(ctx context.Context, bridge string) error
	// CreateTap creates a persistent tap attached to bridge, owned by the
	// daemon's uid so that a QEMU running as the daemon's user can open it.
	CreateTap(ctx context.Context, name, bridge string) error
	// DeleteTap deletes a tap (a missing one is not an error).
	DeleteTap(ctx context.Context, name string) error
	// RenameTap renames a tap (pooled taps get a VM's name).
	RenameTap(ctx context.Context, from, to string) error
	// OpenTap returns an open descriptor attached to an existing tap, for
	// the VMM to inherit when it cannot open /dev/net/tun itself (an
	// unprivileged daemon on a host where /dev/net/tun is 0600). nil, nil
	// means "the VMM opens the tap by name" (the daemon runs as root).
	OpenTap(ctx context.Context, name string) (*os.File, error)
	// ListTaps lists the links whose name starts with the tap prefix.
	ListTaps(ctx context.Context, prefix string) ([]string, error)
	// FirewallApply installs (or updates) one VM's rules; sysctls follow.
	FirewallApply(ctx context.Context, rules netfilter.VMRules) error
	// FirewallRemove removes one VM's rules; sysctls follow.
	FirewallRemove(ctx context.Context, vmID string) error
	// FirewallReconcile rebuilds banger's tables for the desired VMs.
	FirewallReconcile(ctx context.Context, desired []netfilter.VMRules) error
	// FirewallTeardown restores the sysctls and deletes banger's tables.
	FirewallTeardown(ctx context.Context) error
	// ListenDNS opens the UDP socket and TCP listener of a DNS server on
	// addr (the bridge gateway, port 53), with IP_FREEBIND.
	ListenDNS(ctx context.Context, addr netip.AddrPort) (net.PacketConn, net.Listener, error)
	// SignalVMM sends sig to a VMM process after verifying it is the one
	// banger launched: pid, its start time and its control socket path.
	SignalVMM(ctx context.Context, t VMMTarget, sig syscall.Signal) error
}

// VMMTarget identifies a VMM process as recorded by the daemon.
type VMMTarget struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // /proc/PID/stat field 22
	// ControlSocket is the VMM's control socket (QMP or API socket), a
	// path inside a managed directory that the VMM's argv references.
	ControlSocket string `json:"control_socket"`
}

// Operation names: the helper's allow-list. Anything else is refused.
const (
	OpPing              = "ping"
	OpEnsureBridge      = "ensure_bridge"
	OpDeleteBridge      = "delete_bridge"
	OpCreateTap         = "create_tap"
	OpDeleteTap         = "delete_tap"
	OpRenameTap         = "rename_tap"
	OpOpenTap           = "open_tap"
	OpListTaps          = "list_taps"
	OpFirewallApply     = "firewall_apply"
	OpFirewallRemove    = "firewall_remove"
	OpFirewallReconcile = "firewall_reconcile"
	OpFirewallTeardown  = "firewall_teardown"
	OpListenDNS         = "listen_dns"
	OpSignalVMM         = "signal_vmm"
)

// Request is one operation sent to the helper. Only the fields of Op are
// read; the others must be empty.
type Request struct {
	Op      string              `json:"op"`
	Bridge  string              `json:"bridge,omitempty"`
	CIDR    string              `json:"cidr,omitempty"`
	Name    string              `json:"name,omitempty"`     // tap name; rename: the old name
	NewName string              `json:"new_name,omitempty"` // rename: the new name
	Prefix  string              `json:"prefix,omitempty"`   // list_taps
	Rules   *netfilter.VMRules  `json:"rules,omitempty"`
	Desired []netfilter.VMRules `json:"desired,omitempty"`
	VMID    string              `json:"vm_id,omitempty"`
	Addr    string              `json:"addr,omitempty"` // listen_dns: IP:53
	Target  *VMMTarget          `json:"target,omitempty"`
	Signal  int                 `json:"signal,omitempty"`
}

// Response is the helper's answer. Error is empty on success.
type Response struct {
	Error string `json:"error,omitempty"`
	// Refused is true when the helper refused the request (peer, op or
	// input) without doing anything.
	Refused bool     `json:"refused,omitempty"`
	Taps    []string `json:"taps,omitempty"`
	// FDs names the file descriptors passed with the response, in order
	// ("udp", "tcp" for listen_dns).
	FDs []string `json:"fds,omitempty"`
	// Version is the helper's protocol version (ping).
	Version int `json:"version,omitempty"`
}

// ProtocolVersion is the wire version reported by ping.
const ProtocolVersion = 1
