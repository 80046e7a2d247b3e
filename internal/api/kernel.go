package api

import "time"

const (
	MethodKernelList   = "kernel.list"
	MethodKernelShow   = "kernel.show"
	MethodKernelImport = "kernel.import" // streams EventStage
	MethodKernelPull   = "kernel.pull"   // streams EventStage
	MethodKernelRemove = "kernel.rm"
)

// Kernel is a guest kernel in banger's kernel store: a kernel image and its
// modules; banger generates the initramfs each boot needs from them.
type Kernel struct {
	Name string `json:"name"`
	// Release is the kernel's `uname -r`.
	Release string `json:"release"`
	// Kernel is the kernel image (bzImage or ELF vmlinux); Modules its modules tree.
	Kernel  string `json:"kernel"`
	Modules string `json:"modules"`
	// Source says where it came from ("pull PACKAGE VERSION", "import FILE").
	Source    string    `json:"source"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	// UsedBy lists the images that boot with this kernel.
	UsedBy []string `json:"used_by,omitempty"`
}

// KernelAvailable is a kernel `kernel pull` can fetch by name.
type KernelAvailable struct {
	Name string `json:"name"`
	// Package is the Debian package pulled from the host's apt sources
	// ("" when the kernel comes only as a bundle).
	Package     string `json:"package"`
	Description string `json:"description"`
	// Bundle is the URL of the kernel catalog's bundle, tried before the
	// package ("" when the catalog has none).
	Bundle string `json:"bundle,omitempty"`
	// Pulled is true when the store has a kernel of this name.
	Pulled bool `json:"pulled"`
}

// KernelListParams: Available lists the catalog instead of the store.
type KernelListParams struct {
	Available bool `json:"available,omitempty"`
}

// KernelImportParams imports a kernel from host files: Kernel with Modules
// (a lib/modules/RELEASE directory), or Deb (a Debian kernel package,
// whose own kernel is used unless Kernel is given). Paths are absolute.
type KernelImportParams struct {
	Name    string `json:"name"`
	Kernel  string `json:"kernel,omitempty"`
	Modules string `json:"modules,omitempty"`
	Deb     string `json:"deb,omitempty"`
	// Force replaces a kernel of the same name.
	Force bool `json:"force,omitempty"`
}

// KernelPullParams fetches a catalog kernel (Name "" = the default).
type KernelPullParams struct {
	Name  string `json:"name,omitempty"`
	Force bool   `json:"force,omitempty"`
}

// KernelRef names one kernel.
type KernelRef struct {
	Name string `json:"name"`
}
