// Package privileged is the one door to everything banger does that needs
// root: the bridge, the VM taps, banger's nftables tables (and, through them,
// the sysctls ip_forward and route_localnet, whose prior values netfilter
// records and restores), the DNS socket on the bridge address (port 53), and
// signals to VMM processes.
//
// Two backends implement Ops:
//
//	Local    in-process: the daemon runs as root (development, CI). It calls
//	         hostnet, netfilter and bind directly.
//	Client   the daemon runs as its owner; every operation is one request to
//	         the root helper (cmd/bangerd-root) over its Unix socket. A
//	         listening socket comes back as file descriptors (SCM_RIGHTS).
//
// The helper side is Server: it checks the peer (SO_PEERCRED uid must be the
// installed owner), accepts only the operations in the allow-list (Op*),
// validates every input against its Policy (Check), runs Local, and logs
// every operation and every refusal. The Policy is the helper's own,
// root-owned configuration (written by `banger system install`), never the
// daemon's word: the bridge name, the CIDR, the tap prefix, the managed
// directories, the VMM binaries and the owner uid.
//
// Map of the package:
//
//	doc.go        this map
//	ops.go        Ops (the interface), Request/Response (the wire), op names
//	policy.go     Policy: the helper's configuration, loaded from JSON
//	check.go      Check: the allow-list and input validation (paths walked
//	              with Lstat, names, CIDRs, signals, VMM pids)
//	local.go      Local: the in-process backend
//	server.go     Server: socket, SO_PEERCRED, dispatch, logging
//	client.go     Client: the daemon's side of the socket
//	fds.go        SCM_RIGHTS framing of a response with file descriptors
//	taps.go       TapOps: Ops as hostnet.TapOps, for the daemon's tap pool
//
// The wire: one request per connection. The client writes one JSON Request
// and shuts its write side; the server answers with one JSON Response (file
// descriptors, when any, ride on the first write) and closes.
package privileged
