package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// qcow2Backend makes a qcow2 overlay whose backing file is the raw base.
type qcow2Backend struct{}

func (qcow2Backend) Name() string { return "qcow2" }

func (qcow2Backend) Available(string) error { return needTool("qemu-img") }

func (b qcow2Backend) Create(ctx context.Context, base, path string, sizeBytes int64) (Root, error) {
	absBase, baseSize, err := checkBase(base)
	if err != nil {
		return Root{}, err
	}
	out := path + ".qcow2"
	if err := checkFree(out); err != nil {
		return Root{}, err
	}
	args := []string{"create", "-q", "-f", "qcow2", "-F", "raw", "-b", absBase, out}
	if sizeBytes > baseSize {
		args = append(args, strconv.FormatInt(sizeBytes, 10))
	}
	if _, err := run(ctx, "qemu-img", args...); err != nil {
		_ = removeFile(context.WithoutCancel(ctx), out)
		return Root{}, err
	}
	return Root{Backend: b.Name(), Path: out, Format: "qcow2", Base: absBase}, nil
}

func (qcow2Backend) Activate(_ context.Context, r Root) (string, error) { return activateFile(r) }

func (qcow2Backend) Deactivate(context.Context, Root) error { return nil }

func (qcow2Backend) Remove(ctx context.Context, r Root) error { return removeFile(ctx, r.Path) }

// checkBase returns the absolute path and size of a base image.
func checkBase(base string) (string, int64, error) {
	abs, err := filepath.Abs(base)
	if err != nil {
		return "", 0, err
	}
	size, err := fileSize(abs)
	if err != nil {
		return "", 0, fmt.Errorf("base image: %w", err)
	}
	return abs, size, nil
}

// checkFree refuses to overwrite an existing file.
func checkFree(path string) error {
	_, err := os.Lstat(path)
	if err == nil {
		return fmt.Errorf("%s already exists", path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// activateFile is Activate for file backends: the VMM opens r.Path.
func activateFile(r Root) (string, error) {
	if _, err := os.Stat(r.Path); err != nil {
		return "", fmt.Errorf("%s root: %w", r.Backend, err)
	}
	return r.Path, nil
}
