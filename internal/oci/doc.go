// Package oci turns an OCI or Docker registry image into a banger root
// filesystem image (a raw ext4 file) without root privileges and without
// mounting anything.
//
// The pipeline has three stateless steps, each usable on its own:
//
//	img, err := oci.Pull(ctx, "debian:bookworm", oci.PullOptions{CacheDir: dir})
//	m, err := oci.Flatten(ctx, img, staging)           // layers -> directory + Manifest
//	err = oci.BuildExt4(ctx, staging, m, "rootfs.ext4", 0) // directory + Manifest -> ext4
//
// Files:
//
//	pull.go      Pull: resolve a reference (index -> linux/amd64), fetch the
//	             config and layer blobs into a content-addressed cache shared
//	             by all pulls (CacheDir/blobs/sha256/<hex>), report progress.
//	flatten.go   Flatten: apply layers oldest first into a staging directory
//	             (whiteouts, opaque directories, hardlinks, symlinks), refusing
//	             entries that would escape it; records ownership, modes and
//	             xattrs in a Manifest because an unprivileged extraction cannot
//	             give files arbitrary owners.
//	resolve.go   in-tree path resolution (symlinks followed as the guest would,
//	             never outside the staging directory).
//	manifest.go  Manifest, Entry and Note.
//	ext4.go      BuildExt4: size from content, mkfs.ext4 -d, one batched
//	             debugfs -w script restoring owners/modes/xattrs/FIFOs, a
//	             read-back check of every path (debugfs ls -p), e2fsck -fn,
//	             atomic rename into place.
//	name.go      DefaultName: an image name derived from a reference.
//	tools.go     locating and running e2fsprogs.
//
// Nothing here calls chown, mknod, mount or any other privileged operation:
// files are extracted as whoever runs the code, and the real owners, setuid
// and friends, xattrs (security.capability included) and FIFOs are written
// into the ext4 image with debugfs, which edits the image file directly.
package oci
