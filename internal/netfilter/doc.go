// Package netfilter is banger's host firewall: per-VM NAT, guest isolation
// and published ports, written with google/nftables over netlink (no `nft`
// subprocess).
//
// # Tables
//
// Everything lives in banger's own tables, both named Config.Table
// ("banger" by default), and nothing else is ever read for changes or
// written:
//
//	table inet banger     NAT, host input from guests, forward policy
//	  prerouting  nat     DNAT of published ports, traffic from outside
//	  output      nat     DNAT of published ports, traffic of the host itself
//	  postrouting nat     per-VM masquerade; loopback->guest masquerade
//	  input       filter  from the bridge: replies, DNS (53 udp/tcp) and
//	                      Config.HostPorts on the bridge address, ping of it;
//	                      everything else rejected (icmpx admin-prohibited)
//	  forward     filter  bridge<->bridge (only seen with br_netfilter) drop,
//	                      established accept, jump vm-forward, then guests
//	                      outward rejected and new connections to guests dropped
//	  vm-forward          per-VM accepts: NAT'd guest outward, published ports
//	  state               records of sysctls banger changed (never jumped to)
//	table bridge banger   what only bridge hooks see
//	  prerouting  filter  per-VM source check on its tap (IPv4 and ARP)
//	  forward     filter  tap-to-tap frames dropped (unless AllowGuestToGuest)
//
// Base chains have policy accept: banger's rules only decide about traffic
// of its bridge, and an accept here does not override another table's drop.
//
// Why a bridge table: frames between two ports of one bridge are switched,
// never routed, so inet hooks do not see them unless br_netfilter's
// bridge-nf-call-iptables is on. That sysctl is per network namespace but
// covers every bridge in it (Docker's too), and banger cannot rely on it
// either way, so guest-to-guest isolation is a `bridge` family forward
// chain matching the VM tap prefix on both ports (`iifname "bgtap*" oifname
// "bgtap*" drop`); it holds for every VM, applied or not. (The bridge
// meta keys ibrname/obrname are not built into every kernel, and bridge
// reject is not either; hence the prefix match and drop.) For the case
// where br_netfilter is on, the inet forward chain applies the same policy
// to bridge-to-bridge traffic, so AllowGuestToGuest opens both.
//
// # Identifying rules
//
// Every rule carries a comment (nftables rule userdata, shown by `nft
// list`): "banger base …" for the config's static policy, "banger
// vm=<id> [name=<name>] nat|publish <spec>|antispoof" for a VM's rules,
// "banger state <knob>=<prior>" for sysctl records. Apply and Remove find a
// VM's rules by that comment and change them in one atomic netlink batch;
// Apply of rules already in place is a no-op.
//
// # Published ports and loopback
//
// `-p [hostip:]hostport:guestport[/tcp|udp]` (ParsePublish) becomes DNAT in
// prerouting (from outside; never for traffic coming from the bridge) and in
// output (from the host itself), plus a forward accept restricted to `ct
// status dnat`. Reaching a port on 127.0.0.1 is done in the kernel, not with
// a userspace proxy: the output DNAT rewrites the destination, and
//
//   - route_localnet=1 on the bridge lets the rerouted packet leave with its
//     127.0.0.1 source (the kernel refuses loopback sources on other devices
//     otherwise), and lets the de-NATed replies in;
//   - the base postrouting rule masquerades 127.0.0.0/8 sources leaving via
//     the bridge to the bridge address, so the guest replies to an address
//     it can route.
//
// This keeps UDP working, survives daemon restarts (no proxy process to
// reconnect) and keeps everything in the table. The risk of route_localnet
// (a guest sending to 127.0.0.1 via the bridge to reach host loopback
// services, as in CVE-2020-8558) is closed by the input policy, which
// refuses everything from the bridge but replies, DNS and the allowed ports
// on the bridge address; a test checks exactly that attack. route_localnet
// is turned on only while some published port covers 127.0.0.1.
//
// A new published port is refused when another VM already publishes an
// overlapping host port, or when binding it on the host fails
// (CheckHostPortFree: something listens there, or the address is not
// local).
//
// # Sysctls
//
// net.ipv4.ip_forward is switched on while some VM has NAT or a published
// port, and conf.<bridge>.route_localnet while some published port covers
// loopback. Before switching a knob on, its prior value is recorded as a
// rule in the state chain, so the record survives a daemon restart or crash
// with the table; when no VM needs the knob any more (or on Teardown) the
// prior value is written back and the record dropped. A knob that was
// already on is never recorded, so banger never switches off what it did
// not switch on.
//
// # Daemon life cycle
//
//	New(cfg)            validate only
//	Reconcile(desired)  on start: rebuild both tables atomically from the
//	                    config and the VMs that should have rules, read them
//	                    back and compare (Verify), then fix sysctls
//	Apply(vm)/Remove(id) on VM start/stop or config change
//	Teardown()          `daemon stop --cleanup` / uninstall: restore sysctls,
//	                    delete both tables
//
// Network namespaces: like hostnet, every method acts in the network
// namespace of the calling goroutine's thread (it locks the thread for its
// duration).
package netfilter
