package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestKernelsAndImageLink(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := Kernel{Name: "k1", Release: "6.1.0-test", Dir: "/state/kernels/k1", Source: "import", SizeBytes: 42, CreatedAt: time.Now()}
	if err := s.UpsertKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	k.Source = "pull linux-image-x 1.0"
	if err := s.UpsertKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetKernel(ctx, "k1")
	if err != nil || got.Source != k.Source || got.Release != "6.1.0-test" || got.SizeBytes != 42 {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := s.GetKernel(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing kernel: %v", err)
	}
	if err := s.SetImageKernel(ctx, "no-image", "k1"); err == nil {
		t.Fatal("linked a kernel to an image that does not exist")
	}
	if err := s.InsertImage(ctx, Image{Name: "img", RootFS: "/r", Kernel: "/state/kernels/k1/vmlinuz", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetImageKernel(ctx, "img", "no-kernel"); err == nil {
		t.Fatal("linked an image to a kernel that does not exist")
	}
	if err := s.SetImageKernel(ctx, "img", "k1"); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.ImageKernel(ctx, "img"); n != "k1" {
		t.Fatalf("image kernel %q", n)
	}
	if users, _ := s.ImagesUsingKernel(ctx, "k1"); len(users) != 1 || users[0] != "img" {
		t.Fatalf("users %v", users)
	}
	if err := s.DeleteKernel(ctx, "k1"); err == nil {
		t.Fatal("deleted a kernel an image uses")
	}
	if err := s.DeleteImage(ctx, "img"); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.ImageKernel(ctx, "img"); n != "" {
		t.Fatalf("link survived the image: %q", n)
	}
	if err := s.DeleteKernel(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if ks, _ := s.ListKernels(ctx); len(ks) != 0 {
		t.Fatalf("kernels left: %v", ks)
	}
	if err := s.DeleteKernel(ctx, "k1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}
