package api

import "time"

const (
	MethodImageRegister = "image.register"
	MethodImageList     = "image.list"
	MethodImageShow     = "image.show"
	MethodImageDelete   = "image.delete"
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
