// Package sysinstall installs banger as a system service: the daemon runs
// as an ordinary user (the owner) and only the root helper (bangerd-root)
// runs as root.
//
// Install copies the binaries, writes the root helper's policy (owner uid,
// managed directories, network, VMM binaries), renders two systemd units and
// records everything it wrote in install metadata; it enables the units when
// systemd is running (and says so when it is not). Uninstall removes exactly
// what the metadata lists — a file changed since install is left in place and
// reported — and, with purge, banger's state directories. Every path is
// taken below Options.Root, so a staging prefix can be installed into and
// inspected (tests, packaging).
//
// Map of the package:
//
//	doc.go       this map
//	units.go     the two unit files (hardening, KillMode=process)
//	install.go   Install, Uninstall, Status; the undo of a failed install
//	meta.go      Metadata: what install wrote, owner, sockets; read/write
//
// Layout of an install (paths inside Root):
//
//	/usr/local/bin/{banger,bangerd,bangerd-root,banger-agent}
//	/etc/banger/root-helper.json                 the helper's policy
//	/etc/banger/install.json                     the metadata
//	/etc/systemd/system/bangerd.service          User=owner, KillMode=process
//	/etc/systemd/system/bangerd-root.service     root, capability-bounded
//	/var/lib/banger, /var/cache/banger, /run/banger   the daemon's system
//	                                             layout (paths.Resolve(true)),
//	                                             created by systemd as the owner
package sysinstall
