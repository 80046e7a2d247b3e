package api

import "time"

const (
	MethodImageRegister = "image.register"
	MethodImageList     = "image.list"
	MethodImageShow     = "image.show"
	MethodImageDelete   = "image.delete"
	// MethodImagePull begins an asynchronous pull (ImagePullParams) and
	// returns its Op; follow it with op.wait like vm.create.
	MethodImagePull = "image.pull"
	// MethodImagePromote copies a registered image's files into banger's
	// store (ImageRef) and returns the Image.
	MethodImagePromote = "image.promote"
	// MethodImageCachePrune removes cached registry blobs
	// (ImageCachePruneParams) and returns an ImageCachePruneResult.
	MethodImageCachePrune = "image.cache_prune"
)

// Image is a bootable root filesystem with the kernel that boots it.
type Image struct {
	Name string `json:"name"`
	// RootFS is a raw ext4 image used read-only as the base of VM roots.
	RootFS string `json:"rootfs"`
	// Kernel is an ELF vmlinux or a bzImage; Initrd is optional.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd,omitempty"`
	// KernelName is the kernel-store kernel the image boots with (its
	// initramfs is banger's own); "" when registered with a kernel file.
	KernelName string `json:"kernel_name,omitempty"`
	// Managed images live in banger's store; registered ones point at host files.
	Managed   bool      `json:"managed"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	// UsedBy lists the VMs created from this image.
	UsedBy []string `json:"used_by,omitempty"`
	// Source: "registered" (host files), "oci" (pulled from a registry),
	// "catalog" (a catalog bundle) or "promoted" (registered, then copied
	// into the store).
	Source string `json:"source"`
	// Ref is the registry reference or catalog name pulled; Digest the
	// manifest digest or bundle sha256.
	Ref    string `json:"ref,omitempty"`
	Digest string `json:"digest,omitempty"`
	// Dir is the image's directory in banger's store (managed images).
	Dir string `json:"dir,omitempty"`
	// ContentBytes is the file content of the root filesystem (SizeBytes
	// is the size of the ext4 image holding it).
	ContentBytes int64 `json:"content_bytes,omitempty"`
}

// ImagePullParams pulls an image from a registry into banger's store.
// DefaultImage is the image `vm create` boots without --image, and
// DefaultImageSource what `vm create`/`vm run` pull under that name on first
// use: the catalog bundle of that name, else its recipe built from the
// host's Debian package source.
const (
	DefaultImage       = "default"
	DefaultImageSource = "debian-bookworm"
)

type ImagePullParams struct {
	// Ref is a registry reference, e.g. "docker.io/library/debian:bookworm"
	// or "127.0.0.1:5000/test:1".
	Ref string `json:"ref"`
	// Name of the new image; default derived from Ref
	// (docker.io/library/debian:bookworm -> debian-bookworm).
	Name string `json:"name,omitempty"`
	// Size of the root filesystem, e.g. "4GiB" or "512M"; default sized
	// from the content.
	Size string `json:"size,omitempty"`
	// Insecure allows plain HTTP to a registry that is not local.
	Insecure bool `json:"insecure,omitempty"`
	// Build makes a built-in recipe (Ref names it, e.g. "debian-bookworm")
	// from the host's Debian package source instead of downloading its
	// catalog bundle.
	Build bool `json:"build,omitempty"`
}

// ImageCachePruneParams removes cached registry blobs.
type ImageCachePruneParams struct {
	// DryRun reports what would be removed without removing it.
	DryRun bool `json:"dry_run,omitempty"`
}

// ImageCachePruneResult says what a prune removed (or would remove).
type ImageCachePruneResult struct {
	Files  int   `json:"files"`
	Bytes  int64 `json:"bytes"`
	DryRun bool  `json:"dry_run"`
}

// ImageRegisterParams registers host files as an image (unmanaged: banger
// never modifies or deletes them). The kernel is either a file (Kernel,
// with an optional Initrd) or a kernel-store kernel by name (KernelName).
type ImageRegisterParams struct {
	Name       string `json:"name"`
	RootFS     string `json:"rootfs"`
	Kernel     string `json:"kernel,omitempty"`
	Initrd     string `json:"initrd,omitempty"`
	KernelName string `json:"kernel_name,omitempty"`
}

// ImageRef names one image.
type ImageRef struct {
	Name string `json:"name"`
}
