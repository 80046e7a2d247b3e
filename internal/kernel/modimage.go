package kernel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"banger/internal/oci"
	"banger/internal/store"
)

// ModulesImageFile is the read-only ext4 image of a kernel's modules tree
// (modules/RELEASE/ with its depmod files at the image's root), kept next
// to vmlinuz. A VM booting the kernel gets it as a read-only drive that
// banger-init mounts on /lib/modules/RELEASE, so modprobe works in the
// guest (Docker's overlay, bridge, veth, netfilter modules).
const ModulesImageFile = "modules.ext4"

// buildModulesImage makes out, an ext4 image of the modules tree at tree
// (a directory named for the release), without root (oci.BuildExt4:
// mkfs.ext4 -d, debugfs, e2fsck), after adding depmod's files to the tree
// when it has none. Every file is owned by 0:0 in the image whoever owns
// the tree on the host. out is written to a temporary file and renamed: it
// appears whole or not at all.
func buildModulesImage(ctx context.Context, tree, out string) error {
	if err := depmod(ctx, tree); err != nil {
		return err
	}
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

// depmod writes modules.dep and the other index files modprobe reads into
// the modules tree at tree when it has no modules.dep: Debian's kernel
// packages leave them to their postinst. depmod -b wants
// BASE/lib/modules/RELEASE, so a temporary base links to the tree.
func depmod(ctx context.Context, tree string) error {
	if _, err := os.Stat(filepath.Join(tree, "modules.dep")); err == nil {
		return nil
	}
	tool, err := exec.LookPath("depmod")
	if err != nil {
		return fmt.Errorf("%s has no modules.dep and depmod is not installed: install kmod (apt-get install kmod)", tree)
	}
	abs, err := filepath.Abs(tree)
	if err != nil {
		return err
	}
	base, err := os.MkdirTemp("", "banger-depmod-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(base) // the link only, never the tree
	release := filepath.Base(abs)
	if err := os.MkdirAll(filepath.Join(base, "lib/modules"), 0o755); err != nil {
		return err
	}
	if err := os.Symlink(abs, filepath.Join(base, "lib/modules", release)); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, tool, "-b", base, release).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod -b %s %s: %v: %s", base, release, err, strings.TrimSpace(string(out)))
	}
	if _, err := os.Stat(filepath.Join(tree, "modules.dep")); err != nil {
		return fmt.Errorf("depmod wrote no modules.dep into %s: %w", tree, err)
	}
	return nil
}
