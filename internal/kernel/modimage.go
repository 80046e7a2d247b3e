package kernel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"banger/internal/oci"
	"banger/internal/store"
)

// ModulesImageFile is the read-only ext4 image of a kernel's modules tree
// (modules/RELEASE/ with its depmod files at the image's root), kept next
// to vmlinuz. A VM booting the kernel gets it as a read-only drive that
// banger-init mounts on /lib/modules/RELEASE, so modprobe works in the
// guest (Docker's overlay, bridge, veth, netfilter modules).
const ModulesImageFile = "modules.ext4"

// buildModulesImage makes out, an ext4 image of the modules tree at tree,
// without root (oci.BuildExt4: mkfs.ext4 -d, debugfs, e2fsck). Every file
// is owned by 0:0 in the image whoever owns the tree on the host. out is
// written to a temporary file and renamed: it appears whole or not at all.
func buildModulesImage(ctx context.Context, tree, out string) error {
	m, err := oci.ScanDir(ctx, tree)
	if err != nil {
		return err
	}
	for i := range m.Entries {
		m.Entries[i].UID, m.Entries[i].GID = 0, 0
	}
	if err := oci.BuildExt4(ctx, tree, m, out, 0); err != nil {
		return fmt.Errorf("modules image of %s: %w", tree, err)
	}
	return nil
}

// ModulesImage returns the path of k's modules image, building it first
// when the kernel has none yet (kernels imported before images were made
// at import). Concurrent callers wait for one build.
func (s *Store) ModulesImage(ctx context.Context, k store.Kernel) (string, error) {
	p := filepath.Join(k.Dir, ModulesImageFile)
	if _, err := os.Stat(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return p, err
	}
	s.imgMu.Lock()
	defer s.imgMu.Unlock()
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if err := buildModulesImage(ctx, Modules(k), p); err != nil {
		return "", err
	}
	s.Log.Info("kernel modules image built", "kernel", k.Name, "path", p)
	return p, nil
}
