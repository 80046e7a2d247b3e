package hostnet

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// tunDevice is the TUN/TAP clone device. The namespace of a tap is that of
// the thread that opens it, not of the netlink socket.
const tunDevice = "/dev/net/tun"

// TapFlags are the TUNSETIFF flags a tap is created with and keeps while no
// one is attached: a TAP (ethernet frames), no packet-information header, and
// a virtio-net header, as QEMU's -netdev tap asks for when it opens the tap
// by name. QEMU sets the flags again on attach (it probes IFF_VNET_HDR with
// TUNGETFEATURES), which a persistent tap allows because single-queue mode
// matches.
const TapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// createTapDevice creates the persistent tap name with TapFlags in the
// calling thread's network namespace. IFF_TUN_EXCL makes the call fail
// rather than attach to a device of that name that appeared meanwhile.
//
// netlink.Tuntap is not used: it always issues TUNSETOWNER and TUNSETGROUP,
// so an owner uid comes with group 0 (root), which locks out an unprivileged
// owner that is not in group root. Here the group is left unset, and owner -1
// becomes uid 0 (only root or CAP_NET_ADMIN may attach).
//
// If any step fails before TUNSETPERSIST succeeds, closing the descriptor
// removes the device, so nothing is left behind.
func createTapDevice(name string, owner int) error {
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("create tap %q: open %s: %w", name, tunDevice, err)
	}
	defer unix.Close(fd)

	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("create tap %q: %w", name, err)
	}
	ifr.SetUint16(TapFlags | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("create tap %q: TUNSETIFF: %w", name, err)
	}
	uid := owner
	if uid < 0 {
		uid = 0
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, uid); err != nil {
		return fmt.Errorf("create tap %q: TUNSETOWNER %d: %w", name, uid, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("create tap %q: TUNSETPERSIST: %w", name, err)
	}
	return nil
}
