package sysinstall

import (
	"fmt"
	"strings"
)

// Unit file names.
const (
	DaemonUnit = "bangerd.service"
	HelperUnit = "bangerd-root.service"
)

// unitParams are the values the unit templates take.
type unitParams struct {
	BinDir       string
	Owner        string // user name
	Group        string // the owner's primary group name
	PolicyFile   string
	HelperSocket string
}

// helperUnit renders bangerd-root.service: root, but bounded to the
// capabilities its operations need (netlink/nftables/sysctl and taps:
// NET_ADMIN; port 53: NET_BIND_SERVICE; signals to and /proc/PID/exe of the
// owner's VMMs: KILL, SYS_PTRACE; Lstat in the owner's directories:
// DAC_READ_SEARCH; the socket's owner: CHOWN), with a read-only system.
// /proc/sys stays writable (no ProtectKernelTunables): ip_forward and
// route_localnet are the helper's job.
func helperUnit(p unitParams) string {
	return strings.Join([]string{
		"# Written by `banger system install`; `banger system uninstall` removes it.",
		"[Unit]",
		"Description=banger root helper (privileged operations for bangerd)",
		"Before=" + DaemonUnit,
		"",
		"[Service]",
		"Type=simple",
		fmt.Sprintf("ExecStart=%s/bangerd-root -policy %s", p.BinDir, p.PolicyFile),
		"Restart=on-failure",
		"RestartSec=1s",
		"RuntimeDirectory=banger-root",
		"RuntimeDirectoryMode=0755",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_KILL CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_CHOWN",
		"NoNewPrivileges=yes",
		"ProtectSystem=strict",
		"ProtectHome=read-only",
		"PrivateTmp=yes",
		"ProtectKernelModules=yes",
		"ProtectKernelLogs=yes",
		"ProtectControlGroups=yes",
		"ProtectClock=yes",
		"ProtectHostname=yes",
		"RestrictNamespaces=yes",
		"RestrictRealtime=yes",
		"RestrictSUIDSGID=yes",
		"LockPersonality=yes",
		"MemoryDenyWriteExecute=yes",
		"SystemCallArchitectures=native",
		"RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
		"UMask=0022",
		"",
		"[Install]",
		"WantedBy=multi-user.target",
		"",
	}, "\n")
}

// daemonUnit renders bangerd.service: the owner's daemon with no
// capabilities at all. KillMode=process stops only bangerd itself, so the
// VMMs it started (each in its own session) keep running across a restart
// or upgrade, and RuntimeDirectoryPreserve keeps their sockets. QEMU's TCG
// JIT needs writable+executable memory, so MemoryDenyWriteExecute is not
// set; /dev/kvm and /dev/net/tun must stay reachable (no PrivateDevices).
func daemonUnit(p unitParams) string {
	return strings.Join([]string{
		"# Written by `banger system install`; `banger system uninstall` removes it.",
		"[Unit]",
		"Description=banger daemon (development sandboxes on microVMs)",
		"Requires=" + HelperUnit,
		"After=" + HelperUnit + " network-online.target",
		"Wants=network-online.target",
		"",
		"[Service]",
		"Type=simple",
		"User=" + p.Owner,
		"Group=" + p.Group,
		"Environment=BANGER_SYSTEM=1",
		"Environment=BANGER_ROOT_HELPER=" + p.HelperSocket,
		fmt.Sprintf("ExecStart=%s/bangerd --system", p.BinDir),
		"KillMode=process",
		"Restart=on-failure",
		"RestartSec=1s",
		"TimeoutStopSec=90s",
		"StateDirectory=banger",
		"StateDirectoryMode=0700",
		"CacheDirectory=banger",
		"CacheDirectoryMode=0700",
		"RuntimeDirectory=banger",
		"RuntimeDirectoryMode=0700",
		"RuntimeDirectoryPreserve=yes",
		"ConfigurationDirectory=banger",
		"CapabilityBoundingSet=",
		"AmbientCapabilities=",
		"NoNewPrivileges=yes",
		"ProtectSystem=full",
		"ProtectHome=read-only",
		"PrivateTmp=yes",
		"ProtectKernelModules=yes",
		"ProtectKernelTunables=yes",
		"ProtectKernelLogs=yes",
		"ProtectControlGroups=yes",
		"ProtectClock=yes",
		"ProtectHostname=yes",
		"RestrictSUIDSGID=yes",
		"RestrictRealtime=yes",
		"LockPersonality=yes",
		"SystemCallArchitectures=native",
		"UMask=0077",
		"",
		"[Install]",
		"WantedBy=multi-user.target",
		"",
	}, "\n")
}
