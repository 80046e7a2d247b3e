package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// copyBackend makes a sparse full copy of the raw base: slow and uses space
// for every written extent, but works on any filesystem.
type copyBackend struct{}

func (copyBackend) Name() string { return "copy" }

func (copyBackend) Available(string) error { return nil }

func (b copyBackend) Create(ctx context.Context, base, path string, sizeBytes int64) (Root, error) {
	absBase, baseSize, err := checkBase(base)
	if err != nil {
		return Root{}, err
	}
	out := path + ".raw"
	if err := sparseCopy(ctx, absBase, out, max(sizeBytes, baseSize)); err != nil {
		return Root{}, err
	}
	return Root{Backend: b.Name(), Path: out, Format: "raw", Base: absBase}, nil
}

func (copyBackend) Activate(_ context.Context, r Root) (string, error) { return activateFile(r) }

func (copyBackend) Deactivate(context.Context, Root) error { return nil }

func (copyBackend) Remove(ctx context.Context, r Root) error { return removeFile(ctx, r.Path) }

// SparseCopy copies src to a new file dst keeping holes (see sparseCopy);
// dst must not exist and is removed on error.
func SparseCopy(ctx context.Context, src, dst string) error { return sparseCopy(ctx, src, dst, 0) }

// sparseCopy copies src to a new file dst, copying only the data extents
// (SEEK_DATA/SEEK_HOLE) so holes stay holes, then sets dst's size to
// max(size, size of src). On error dst is removed.
func sparseCopy(ctx context.Context, src, dst string, size int64) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
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
	if err := copyExtents(ctx, in, out, fi.Size()); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Truncate(max(size, fi.Size()))
}

// copyExtents copies each data extent of in (of length n) to the same offset in out.
func copyExtents(ctx context.Context, in, out *os.File, n int64) error {
	fd := int(in.Fd())
	for off := int64(0); off < n; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if errors.Is(err, unix.EINVAL) && off == 0 {
			return copyRange(ctx, in, out, 0, n) // no SEEK_DATA support: copy all
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		end = min(end, n)
		if err := copyRange(ctx, in, out, start, end-start); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// chunk bounds one copy_file_range call so cancellation is noticed.
const chunk = 64 << 20

// copyRange copies n bytes at off from in to out with copy_file_range,
// falling back to read/write where the kernel cannot.
func copyRange(ctx context.Context, in, out *os.File, off, n int64) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		roff, woff := off, off
		c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(min(n, chunk)), 0)
		if err != nil || c == 0 {
			if err != nil && !fallbackErr(err) {
				return fmt.Errorf("copy_file_range: %w", err)
			}
			return copyRW(ctx, in, out, off, n)
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}

func fallbackErr(err error) bool {
	return errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)
}

// copyRW is the portable fallback of copyRange.
func copyRW(ctx context.Context, in, out *os.File, off, n int64) error {
	r := io.NewSectionReader(in, off, n)
	w := io.NewOffsetWriter(out, off)
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		k, err := io.CopyBuffer(w, io.LimitReader(r, chunk), buf)
		if err != nil {
			return err
		}
		if k == 0 {
			return nil
		}
	}
}
