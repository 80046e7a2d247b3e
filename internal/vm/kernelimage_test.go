package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/testutil/kmodtest"
)

// An image registered with a store kernel boots banger's generated
// initramfs (banger-init, the modules, the agent) and keeps the kernel in
// use; bad combinations are refused without adding anything.
func TestImageWithStoreKernel(t *testing.T) {
	ctx := context.Background()
	s := newTestService(t)
	s.Kernels = &kernel.Store{Dir: s.Paths.KernelsDir(), DB: s.Store, Log: s.Log}
	src := t.TempDir()
	const rel = "6.1.0-vmtest"
	kmodtest.WriteBzImage(t, filepath.Join(src, "vmlinuz"), rel)
	kmodtest.WriteGuestModules(t, filepath.Join(src, rel), "")
	if _, err := s.Kernels.Import(ctx, "k", kernel.Source{Kernel: filepath.Join(src, "vmlinuz"), Modules: filepath.Join(src, rel)}, false, nil); err != nil {
		t.Fatal(err)
	}
	base, _ := s.ShowImage(ctx, testImage)
	// The test rootfs is a sparse file without ext4: make it one for registration.
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", base.RootFS).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}

	for _, c := range []struct {
		p    api.ImageRegisterParams
		want string
	}{
		{api.ImageRegisterParams{Name: "a", RootFS: base.RootFS, KernelName: "nope"}, "no kernel named"},
		{api.ImageRegisterParams{Name: "a", RootFS: base.RootFS, KernelName: "k", Kernel: base.Kernel}, "excludes"},
		{api.ImageRegisterParams{Name: "a", RootFS: base.RootFS}, "--kernel is required"},
	} {
		if _, err := s.RegisterImage(ctx, c.p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("RegisterImage(%+v) = %v, want %q", c.p, err, c.want)
		}
	}
	im, err := s.RegisterImage(ctx, api.ImageRegisterParams{Name: "withk", RootFS: base.RootFS, KernelName: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if im.KernelName != "k" || im.Kernel != filepath.Join(s.Paths.KernelsDir(), "k/vmlinuz") || im.Initrd != "" {
		t.Fatalf("image %+v", im)
	}
	if shown, _ := s.ShowImage(ctx, "withk"); shown.KernelName != "k" {
		t.Fatalf("show: %+v", shown)
	}
	if err := s.Kernels.Remove(ctx, "k"); err == nil {
		t.Fatal("removed a kernel an image uses")
	}

	// Booting: without banger-init it is a clear error; with it, the
	// initramfs holds init, agent and modules, and the agent channel is set.
	v := insertVM(t, s, "vk", api.StateStopped)
	row, _ := s.Store.GetImage(ctx, "withk")
	if _, err := s.agentBoot(ctx, row, &v); err == nil || !strings.Contains(err.Error(), "banger-init") {
		t.Fatalf("boot without banger-init: %v", err)
	}
	bin := t.TempDir()
	s.Init, s.Agent = filepath.Join(bin, "banger-init"), filepath.Join(bin, "banger-agent")
	os.WriteFile(s.Init, []byte("INIT"), 0o755)
	os.WriteFile(s.Agent, []byte("AGENT"), 0o755)
	// A kernel imported before modules images existed gets one on first boot.
	k, _ := s.Kernels.Get(ctx, "k")
	modImg := filepath.Join(k.Dir, kernel.ModulesImageFile)
	if err := os.Remove(modImg); err != nil {
		t.Fatalf("the import made no modules image: %v", err)
	}
	bf, err := s.agentBoot(ctx, row, &v)
	if err != nil {
		t.Fatal(err)
	}
	img, channel := bf.Initrd, bf.Channel
	if bf.Modules != modImg {
		t.Fatalf("modules image %q, want %q", bf.Modules, modImg)
	}
	// The image holds the modules tree at its root, owned by root.
	out, err := exec.Command("debugfs", "-R", "stat /modules.builtin", modImg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "User:     0   Group:     0") {
		t.Fatalf("modules.builtin in the modules image: %v\n%s", err, out)
	}
	if cl := s.cmdline(v, true); !strings.HasSuffix(cl, " banger.modules=/dev/vdc") {
		t.Fatalf("cmdline %q", cl)
	}
	if cl := s.cmdline(v, false); strings.Contains(cl, "banger.modules") {
		t.Fatalf("cmdline without modules %q", cl)
	}
	d := bootDrives("/dev/root", "raw", "/w", bf.Modules)
	if len(d) != 3 || d[2].Path != modImg || !d[2].ReadOnly || d[0].ReadOnly || d[1].ReadOnly || !d[0].Root {
		t.Fatalf("drives %+v", d)
	}
	if d := bootDrives("/dev/root", "raw", "/w", ""); len(d) != 2 {
		t.Fatalf("drives without modules %+v", d)
	}
	if channel != agentSocket(v) || !strings.HasPrefix(img, filepath.Join(s.Paths.CacheDir, "initrd")) {
		t.Fatalf("initramfs %s channel %s", img, channel)
	}
	f, _ := os.Open(img)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(zr)
	for _, want := range []string{"INIT", "AGENT", "virtio_blk.ko", "etc/banger-modules"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("initramfs lacks %s", want)
		}
	}

	if err := s.DeleteImage(ctx, "withk"); err != nil {
		t.Fatal(err)
	}
	if err := s.Kernels.Remove(ctx, "k"); err != nil {
		t.Fatalf("remove after the image is gone: %v", err)
	}
}
