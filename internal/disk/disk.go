// Package disk prepares a VM's disks: a copy-on-write root over an image's
// read-only rootfs, and a per-VM ext4 work disk mounted at /root in the guest.
//
// Root backends (one interface, chosen by "auto" or config):
//
//	qcow2    qcow2 overlay with the raw image as backing file (QEMU only)
//	reflink  FICLONE clone of the raw image (XFS/btrfs state directory)
//	dm       device-mapper snapshot: loop-attached base + sparse COW file
//	copy     sparse copy of the raw image (last resort)
//
// Every backend leaves the base image byte-for-byte unchanged. Creation is
// rollback-safe: on error nothing it made remains. Removal retries on EBUSY.
//
// Files:
//
//	disk.go      this overview, Root and the Backend interface
//	choose.go    Backends, Choose: "auto" order per VMM driver and the reason
//	qcow2.go     qcow2 backend (qemu-img create -b); shared base checks
//	reflink.go   reflink backend (FICLONE) and its probe
//	copy.go      copy backend (SEEK_DATA/SEEK_HOLE + copy_file_range)
//	dm.go        dm backend (losetup + dmsetup snapshot), stateless teardown
//	workdisk.go  the per-VM ext4 work disk: create, write files, read, grow
//	debugfs.go   batched debugfs scripts and their error detection
//	size.go      ParseSize ("4GiB", "512M", "1.5G", bytes)
//	exec.go      running tools (stderr in errors), bounded EBUSY retries
//
// External tools are run directly (never through a shell): qemu-img,
// losetup, dmsetup, mkfs.ext4, debugfs, e2fsck and resize2fs.
package disk

import (
	"context"
	"errors"
)

// ErrUnavailable means a backend cannot run on this host (e.g. no device-mapper).
var ErrUnavailable = errors.New("backend unavailable on this host")

// Root is the durable description of a VM's root disk, stored with the VM.
type Root struct {
	Backend string `json:"backend"` // qcow2 | reflink | dm | copy
	// Path is the per-VM file the backend owns (overlay, clone, copy or COW file).
	Path string `json:"path"`
	// Format is what the VMM opens: "qcow2" or "raw".
	Format string `json:"format"`
	// Base is the image rootfs the root was made from (dm re-attaches it).
	Base string `json:"base"`
	// DMName is the device-mapper name (dm backend only).
	DMName string `json:"dm_name,omitempty"`
}

// Backend makes and removes copy-on-write roots.
type Backend interface {
	Name() string
	// Available reports whether the backend can run here for files under dir,
	// with the reason when it cannot (wrapping ErrUnavailable).
	Available(dir string) error
	// Create makes a root for base at path (the backend may add a suffix).
	// sizeBytes, when larger than base, grows the virtual size of the disk
	// (the guest filesystem is not resized).
	Create(ctx context.Context, base, path string, sizeBytes int64) (Root, error)
	// Activate returns the path the VMM should open (for dm: the
	// /dev/mapper node, attaching loops as needed). Idempotent.
	Activate(ctx context.Context, r Root) (string, error)
	// Deactivate undoes Activate (dm: remove the device, detach loops).
	// Idempotent; a no-op for file backends.
	Deactivate(ctx context.Context, r Root) error
	// Remove deletes everything Create made. Idempotent.
	Remove(ctx context.Context, r Root) error
}
