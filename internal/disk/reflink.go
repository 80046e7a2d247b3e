package disk

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// reflinkBackend clones the raw base with FICLONE (XFS, btrfs): the copy
// shares all blocks with the base until written.
type reflinkBackend struct{}

func (reflinkBackend) Name() string { return "reflink" }

// Available probes dir by cloning a small temporary file inside it.
func (reflinkBackend) Available(dir string) error {
	src, err := os.CreateTemp(dir, ".banger-reflink-probe-*")
	if err != nil {
		return unavailable("cannot probe reflink in %s: %v", dir, err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write([]byte("banger reflink probe\n")); err != nil {
		return unavailable("cannot probe reflink in %s: %v", dir, err)
	}
	dst, err := os.CreateTemp(dir, ".banger-reflink-probe-*")
	if err != nil {
		return unavailable("cannot probe reflink in %s: %v", dir, err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) ||
			errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EXDEV) {
			return unavailable("filesystem of %s does not support reflink (%s)", dir, fsType(dir))
		}
		return unavailable("reflink probe in %s (%s) failed: %v", dir, fsType(dir), err)
	}
	return nil
}

func (b reflinkBackend) Create(ctx context.Context, base, path string, sizeBytes int64) (Root, error) {
	absBase, baseSize, err := checkBase(base)
	if err != nil {
		return Root{}, err
	}
	out := path + ".raw"
	if err := clone(absBase, out, max(sizeBytes, baseSize)); err != nil {
		return Root{}, err
	}
	return Root{Backend: b.Name(), Path: out, Format: "raw", Base: absBase}, nil
}

// clone reflinks src into a new file dst of size bytes; on error dst is gone.
func clone(src, dst string, size int64) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		return fmt.Errorf("reflink %s to %s: %w", src, dst, err)
	}
	fi, err := out.Stat()
	if err != nil {
		return err
	}
	if size > fi.Size() {
		return out.Truncate(size)
	}
	return nil
}

func (reflinkBackend) Activate(_ context.Context, r Root) (string, error) { return activateFile(r) }

func (reflinkBackend) Deactivate(context.Context, Root) error { return nil }

func (reflinkBackend) Remove(ctx context.Context, r Root) error { return removeFile(ctx, r.Path) }

// fsType names the filesystem holding path, for error messages.
func fsType(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown"
	}
	switch int64(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case 0x2fc12fc1:
		return "zfs"
	}
	return fmt.Sprintf("fs type %#x", st.Type)
}
