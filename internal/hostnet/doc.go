// Package hostnet manages the host side of VM networking: one Linux bridge
// that carries the gateway address of the configured CIDR, and one persistent
// TAP device per VM attached to it. Everything is done with netlink and
// /dev/net/tun directly (no `ip` or `brctl` subprocesses).
//
// Map of the package:
//
//	Config, Config.Validate      bridge name, CIDR (IPv4, /30 or wider), tap prefix
//	ValidateName                 interface names: 1-15 chars of [a-zA-Z0-9_-], no leading '-'
//	EnsureBridge, DeleteBridge   the bridge: created with a fixed MAC, gateway
//	                             address (first host of the CIDR), admin up; a
//	                             conflicting route on another interface is an error
//	CreateTap, DeleteTap         persistent IFF_TAP|IFF_NO_PI|IFF_VNET_HDR devices,
//	                             enslaved to the bridge and up; QEMU opens them with
//	                             -netdev tap,ifname=NAME,script=no,downscript=no
//	RenameTap                    a tap keeps its bridge port under a new name
//	ListLinks                    link names by prefix (reconcile, leak checks)
//	TapPool (pool.go)            warm taps named PREFIX-poolN, renamed to a VM's
//	                             tap at start and refilled in the background;
//	                             TapOps is the seam for a privileged helper
//	TapName, MAC                 deterministic tap name and guest MAC from a VM id
//	Allocate, Gateway            static guest addresses out of the CIDR
//
// Network namespaces: every function acts on the network namespace of the OS
// thread it runs on, i.e. the calling goroutine's namespace. Functions that
// talk to the kernel lock the goroutine to its thread for their duration, so a
// caller that has locked its goroutine and entered a namespace (as the tests
// do) gets every step, including the /dev/net/tun open that binds a TAP to a
// namespace, done in that namespace. A daemon started inside a namespace (for
// example with `ip netns exec`) needs to do nothing special.
//
// Safety: the Delete functions only ever remove links of the expected kind
// (a bridge, a tun/tap device); a link of that name of another kind is an
// error, never deleted.
package hostnet
