// Package firecracker is the vmm.Driver for Firecracker, driven through its
// HTTP API on a Unix socket, optionally under Firecracker's jailer.
//
//	client.go     Client: typed requests of Firecracker's API (machine-config,
//	              boot-source, drives, network-interfaces, vsock, logger,
//	              actions, GET /); non-2xx answers become *APIError with
//	              Firecracker's fault_message
//	driver.go     Driver (New, Options): Start launches
//	              `firecracker --api-sock <RunDir>/firecracker.sock --id <name>`
//	              through vmm/proc, waits for the socket, configure()s the
//	              machine and sends InstanceStart; on failure nothing is left
//	machine.go    Adopt and the vmm.Machine (Quit is SIGTERM: Firecracker has
//	              no quit action; CtrlAltDel is the SendCtrlAltDel action)
//	jailer.go     JailerOptions, chroot layout, jailer argv and the staging
//	              plan (hard links / device nodes into the chroot)
//	available.go  Probe: binary, /dev/kvm and version checks
//
// Files per VM (under the jailer the socket and vmm.log are in /run inside
// <ChrootBase>/<exec name>/<id>/root instead of RunDir):
//
//	<RunDir>/firecracker.sock  API socket (Handle.ControlSocket)
//	<RunDir>/vmm.log           Firecracker's own log (PUT /logger); the
//	                           previous run's is kept as vmm.log.old
//	Spec.ConsoleLog            the process's stdout and stderr (default
//	                           <RunDir>/console.log): Firecracker writes the
//	                           guest serial console to stdout
//	Spec.GuestChannel          the vsock Unix socket (guest CID 3); under the
//	                           jailer, a symlink into the jail
//
// vmm/proc gives a started process a single output file, so stderr shares
// the console log with stdout. Firecracker logs to vmm.log once the logger
// is configured (the first API call); before that it writes to its standard
// output, so the console log holds only Firecracker's startup lines and,
// when it fails to start, why. Start quotes that output in its error.
//
// Firecracker opens raw images only (no qcow2), boots only on KVM, and exits
// when the guest reboots.
package firecracker
