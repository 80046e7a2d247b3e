// Package bootinit is PID 1 of banger's initramfs (cmd/banger-init).
//
// It loads the virtio modules listed in the initramfs (finit_module, in the
// dependency order computed when the initramfs was built), mounts the root
// disk named on the kernel command line, applies the per-VM settings
// (hostname, network, DNS, work disk on /root) to it, installs banger's guest
// agent and switches root. Then, in one of two modes:
//
//   - systemd mode: the root's init is systemd (default /sbin/init resolving
//     to systemd, or an explicit init=): exec it. The agent runs as a
//     transient unit from a tmpfs /run that systemd adopts, and networking
//     is a systemd-networkd file.
//   - banger mode: the root has no init, /sbin/init is not systemd (busybox,
//     OCI images), or banger.init=banger: banger-init stays PID 1 in the new
//     root and is the guest's init (guestinit.go): pseudo filesystems,
//     hostname, network through netlink, the agent (restarted if it exits),
//     zombie reaping, and a clean power-off on SIGTERM, SIGINT
//     (Ctrl-Alt-Del), SIGPWR, SIGUSR1 (busybox halt) or SIGUSR2 (busybox
//     poweroff, what `banger vm stop` runs through the agent).
//
// Kernel command line (the contract of the former busybox initramfs-init):
//
//	root=/dev/vda | UUID=... | LABEL=...   root device (required), mounted read-write
//	rootfstype=ext4  rootflags=OPTS        optional mount type / options for root
//	init=/sbin/init                        program to switch to (default /sbin/init)
//	banger.hostname=NAME                   /etc/hostname, /etc/hosts (127.0.1.1 NAME)
//	banger.ip=ADDR/PREFIX banger.gw=ADDR   static address (systemd mode: DHCP without it)
//	banger.dns=ADDR                        /etc/resolv.conf
//	banger.work=/dev/vdb                   optional ext4 work disk mounted on /root
//	banger.modules=/dev/vdc                optional ext4 image of the kernel's modules tree, mounted
//	                                       read-only on /lib/modules/RELEASE (modules.go)
//	banger.agent_vsock=PORT                the agent serves vsock PORT (Firecracker)
//	banger.init=banger|auto                force banger mode (default auto)
//
// Any fatal error prints "banger-init: FATAL: ..." on the console and powers
// the VM off, so the host sees the VMM exit instead of a hung guest.
//
// Files:
//
//	cmdline.go    Config and Parse: the kernel command line
//	initramfs.go  Run: stage one, from the initramfs to the switch of root
//	settings.go   per-VM files written into the root (hostname, hosts, network, resolv.conf, agent unit)
//	modules.go    the modules image on /lib/modules/RELEASE: mount point in the root, read-only mount
//	blkid.go      finding a block device by ext2/3/4 UUID= or LABEL=
//	guestinit.go  banger mode: the guest's init after the switch
//	sys.go        small system helpers: mounts, modules, console, power-off
package bootinit
