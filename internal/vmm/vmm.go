// Package vmm defines the virtual machine monitor driver seam.
//
// A Driver starts a machine from a Spec and returns a Machine; after a daemon
// restart it re-attaches to a machine that is still running from the Handle
// the daemon persisted (Adopt). Drivers live in sub-packages:
//
//	vmm/qemu         QEMU -M microvm, QMP control socket (KVM or TCG)
//	vmm/firecracker  Firecracker HTTP API over its API socket (optional jailer)
//	vmm/proc         process identity (pid + start time), pidfd waits, signals
//
// Optional abilities (pause, snapshot, hotplug) return ErrUnsupported from a
// driver that cannot do them, never a silent no-op.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// ErrUnsupported is returned (wrapped) by a driver for an optional ability it lacks.
var ErrUnsupported = errors.New("unsupported by this driver")

// ErrNotRunning is returned by Adopt when the persisted machine is gone, or
// when its pid now belongs to a different process.
var ErrNotRunning = errors.New("machine is not running")

// Unsupported builds the error a driver returns for an optional ability it lacks.
func Unsupported(driver, ability string) error {
	return fmt.Errorf("%s: %w (driver %s)", ability, ErrUnsupported, driver)
}

// DiskFormat is the on-disk format of a drive the VMM opens.
type DiskFormat string

const (
	FormatRaw   DiskFormat = "raw"
	FormatQcow2 DiskFormat = "qcow2"
)

// Drive is one block device given to the guest, in order (the first is /dev/vda).
type Drive struct {
	ID       string     // short identifier, [a-z0-9_]
	Path     string     // host path of the image file or block device
	Format   DiskFormat // raw or qcow2 (qcow2 is QEMU only)
	ReadOnly bool
	Root     bool // the root filesystem drive
}

// NIC is one network interface backed by a host TAP device.
type NIC struct {
	ID  string // short identifier
	Tap string // host tap device name
	MAC string // guest MAC address, aa:bb:cc:dd:ee:ff
	// File, when set, is a descriptor already attached to the tap (from
	// the root helper, for a daemon that cannot open /dev/net/tun): the
	// VMM inherits it instead of opening the tap by name. The caller
	// closes it after Start. QEMU only.
	File *os.File
}

// Spec is everything a driver needs to start a machine.
type Spec struct {
	Name      string // VM name, for logs and process titles
	RunDir    string // per-VM runtime directory for sockets (must exist)
	Kernel    string // ELF vmlinux or bzImage
	Initrd    string // optional
	Cmdline   string // full kernel command line
	VCPU      int
	MemoryMiB int
	Drives    []Drive
	NICs      []NIC
	// ConsoleLog is the file the guest's serial console is appended to.
	ConsoleLog string
	// GuestChannel, when set, is the host Unix socket path of the
	// host<->guest agent channel (virtio-serial port or vsock UDS).
	GuestChannel string
}

// Handle is the durable identity of a running machine. The daemon stores it
// so that it can adopt the machine after a restart and verify that a pid has
// not been recycled before signalling it.
type Handle struct {
	Driver        string `json:"driver"`
	PID           int    `json:"pid"`
	StartTime     uint64 `json:"start_time"`     // /proc/<pid>/stat field 22, clock ticks since boot
	ControlSocket string `json:"control_socket"` // QMP socket or Firecracker API socket
	Accel         string `json:"accel"`          // "kvm" or "tcg"
}

// Driver starts and adopts machines.
type Driver interface {
	// Name is the driver's config name ("qemu", "firecracker").
	Name() string
	// Accel reports the accelerator this driver will use and why.
	Accel() (accel string, reason string)
	// Start launches a machine and returns once the VMM runs the guest.
	// The VMM process is started in its own session so that it survives
	// the daemon. On error nothing is left running.
	Start(ctx context.Context, spec Spec) (Machine, error)
	// Adopt re-attaches to a machine started by an earlier daemon. It
	// returns ErrNotRunning when the process is gone or is not ours.
	Adopt(ctx context.Context, h Handle) (Machine, error)
}

// Machine is a running VMM process.
type Machine interface {
	Handle() Handle
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
	// Quit asks the VMM to exit now (QMP quit; Firecracker has no quit,
	// so SIGTERM). The guest should have powered off first; Quit does not
	// wait, use Done.
	Quit(ctx context.Context) error
	// Signal sends sig to the VMM process after checking its identity.
	Signal(sig syscall.Signal) error
	// CtrlAltDel asks the guest to shut down through the VMM (ACPI / i8042).
	CtrlAltDel(ctx context.Context) error
	// Close releases the daemon's resources for the machine (control
	// connection) without stopping it.
	Close() error
}
