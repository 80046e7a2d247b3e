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
// Files per VM (without the jailer; under it, the same names live in /run
// inside <ChrootBase>/<exec name>/<id>/root):
//
//	<RunDir>/firecracker.sock  API socket (Handle.ControlSocket)
//	<RunDir>/vmm.log           Firecracker's own log (PUT /logger)
//	Spec.ConsoleLog            the process's stdout and stderr: Firecracker
//	                           writes the guest serial console to stdout
//
// vmm/proc gives a started process a single output file, so stderr shares
// the console log with stdout. Firecracker logs to vmm.log once the logger
// is configured (the first API call), so stderr carries only what
// Firecracker prints before that, typically why it failed to start; Start
// quotes it in its error.
//
// Firecracker opens raw images only (no qcow2), boots only on KVM, and exits
// when the guest reboots.
package firecracker
