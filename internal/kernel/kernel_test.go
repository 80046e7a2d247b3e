package kernel

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/initrd"
	"banger/internal/store"
	"banger/internal/testutil/kmodtest"
)

const release = "6.1.0-test-amd64"

func newStore(t *testing.T) *Store {
	t.Helper()
	dir := t.TempDir()
	db, err := store.Open(context.Background(), filepath.Join(dir, "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &Store{Dir: filepath.Join(dir, "kernels"), DebCache: filepath.Join(dir, "debs"), DB: db,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// storeClean checks that the kernel directory holds exactly the names given.
func storeClean(t *testing.T, s *Store, want ...string) {
	t.Helper()
	ents, _ := os.ReadDir(s.Dir)
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("kernel store holds %v, want %v", got, want)
	}
}

func TestImportFilesAndRemove(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	src := t.TempDir()
	kmodtest.WriteBzImage(t, filepath.Join(src, "vmlinuz"), release)
	kmodtest.WriteGuestModules(t, filepath.Join(src, "lib/modules", release), "")

	var stages []string
	report := func(st api.Stage) {
		if st.State != "running" {
			stages = append(stages, st.Name+":"+st.State)
		}
	}
	// --modules may name lib/modules (one release inside) or the release directory.
	k, err := s.Import(ctx, "k1", Source{Kernel: filepath.Join(src, "vmlinuz"), Modules: filepath.Join(src, "lib/modules")}, false, report)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(stages, " "); got != "copy:done check modules:done modules image:done install:done" {
		t.Fatalf("stages %s", got)
	}
	if k.Release != release || k.Dir != filepath.Join(s.Dir, "k1") || k.SizeBytes == 0 {
		t.Fatalf("kernel %+v", k)
	}
	if _, err := os.Stat(filepath.Join(Modules(k), "kernel/drivers/block/virtio_blk.ko")); err != nil {
		t.Fatal(err)
	}
	// The modules image is made at import: the tree at its root, as ext4.
	modImg := filepath.Join(k.Dir, ModulesImageFile)
	if out, err := exec.Command("debugfs", "-R", "ls -p /kernel/drivers/block", modImg).CombinedOutput(); err != nil || !strings.Contains(string(out), "/virtio_blk.ko/") {
		t.Fatalf("modules image: %v\n%s", err, out)
	}
	// The tree had no modules.dep (as Debian's packages): depmod added it.
	if out, err := exec.Command("debugfs", "-R", "cat /modules.dep", modImg).CombinedOutput(); err != nil || !strings.Contains(string(out), "kernel/drivers/block/virtio_blk.ko:") {
		t.Fatalf("modules.dep in the modules image: %v\n%s", err, out)
	}
	if _, err := os.Lstat(filepath.Join(Modules(k), "build")); err == nil {
		t.Fatal("the build symlink was copied")
	}
	storeClean(t, s, "k1")

	if _, err := s.Import(ctx, "k1", Source{Kernel: filepath.Join(src, "vmlinuz"), Modules: filepath.Join(src, "lib/modules", release)}, false, nil); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("duplicate import: %v", err)
	}
	if _, err := s.Import(ctx, "k1", Source{Kernel: filepath.Join(src, "vmlinuz"), Modules: filepath.Join(src, "lib/modules", release), Origin: "again"}, true, nil); err != nil {
		t.Fatalf("forced import: %v", err)
	}
	if v, _ := s.Show(ctx, "k1"); v.Source != "again" || v.Kernel != filepath.Join(s.Dir, "k1/vmlinuz") {
		t.Fatalf("after --force: %+v", v)
	}
	storeClean(t, s, "k1")

	// The generated initramfs holds the kernel's modules.
	initBin := filepath.Join(t.TempDir(), "banger-init")
	os.WriteFile(initBin, []byte("init"), 0o755)
	img, err := Initramfs(k, filepath.Join(t.TempDir(), "cache"), initBin, "")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(img); err != nil || st.Size() == 0 {
		t.Fatalf("initramfs %s: %v", img, err)
	}

	// In use by an image: refused; then removed with its files.
	s.DB.InsertImage(ctx, store.Image{Name: "img", RootFS: "/r", Kernel: Image(k), CreatedAt: time.Now()})
	s.DB.SetImageKernel(ctx, "img", "k1")
	if err := s.Remove(ctx, "k1"); err == nil || !strings.Contains(err.Error(), "used by image") {
		t.Fatalf("remove in use: %v", err)
	}
	if v, _ := s.Show(ctx, "k1"); len(v.UsedBy) != 1 || v.UsedBy[0] != "img" {
		t.Fatalf("used by: %+v", v)
	}
	s.DB.DeleteImage(ctx, "img")
	if err := s.Remove(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	storeClean(t, s)
	if err := s.Remove(ctx, "k1"); err == nil || !strings.Contains(err.Error(), "no kernel named") {
		t.Fatalf("remove twice: %v", err)
	}
}

func TestImportRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	src := t.TempDir()
	kmodtest.WriteBzImage(t, filepath.Join(src, "vmlinuz"), release)
	kmodtest.WriteBzImage(t, filepath.Join(src, "vmlinuz-other"), "6.9.9-other")
	kmodtest.WriteGuestModules(t, filepath.Join(src, "good", release), "")
	kmodtest.WriteGuestModules(t, filepath.Join(src, "novirtioblk", release), "virtio_blk")
	os.WriteFile(filepath.Join(src, "notakernel"), []byte("hello"), 0o644)
	kernel := filepath.Join(src, "vmlinuz")
	good := filepath.Join(src, "good", release)
	for _, c := range []struct {
		name string
		src  Source
		want string
	}{
		{"Bad", Source{Kernel: kernel, Modules: good}, "kernel name"},
		{"k", Source{Kernel: kernel}, "--modules"},
		{"k", Source{Kernel: "vmlinuz", Modules: good}, "absolute path"},
		{"k", Source{Kernel: filepath.Join(src, "notakernel"), Modules: good}, "not a kernel"},
		{"k", Source{Kernel: filepath.Join(src, "missing"), Modules: good}, "no such file"},
		{"k", Source{Kernel: filepath.Join(src, "vmlinuz-other"), Modules: good}, "the kernel is 6.9.9-other but the modules are for " + release},
		{"k", Source{Kernel: kernel, Modules: src}, "not a modules directory"},
		{"k", Source{Kernel: kernel, Modules: filepath.Join(src, "novirtioblk", release)}, "cannot boot a banger guest: module virtio_blk"},
		{"k", Source{Deb: filepath.Join(src, "notakernel"), Modules: good}, "exclude each other"},
	} {
		_, err := s.Import(ctx, c.name, c.src, false, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Import(%s, %+v) = %v, want %q", c.name, c.src, err, c.want)
		}
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Import(canceled, "k", Source{Kernel: kernel, Modules: good}, false, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled import: %v", err)
	}
	storeClean(t, s)
	if ks, _ := s.List(ctx); len(ks) != 0 {
		t.Fatalf("rows after failed imports: %+v", ks)
	}
	if _, err := s.Pull(ctx, "no-such", false, nil); err == nil || !strings.Contains(err.Error(), "in the catalog") {
		t.Fatalf("pull unknown: %v", err)
	}
}

// A real Debian package (built with dpkg-deb -b) imports with its own kernel.
func TestImportDeb(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	pkg := filepath.Join(t.TempDir(), "pkg")
	kmodtest.WriteBzImage(t, filepath.Join(pkg, "boot/vmlinuz-"+release), release)
	kmodtest.WriteGuestModules(t, filepath.Join(pkg, "lib/modules", release), "")
	os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755)
	os.WriteFile(filepath.Join(pkg, "DEBIAN/control"), []byte("Package: linux-image-test\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@example.invalid>\nDescription: test kernel\n"), 0o644)
	deb := filepath.Join(t.TempDir(), "linux-image-test_1.0_amd64.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-b", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -b: %v %s", err, out)
	}
	k, err := s.Import(ctx, "debk", Source{Deb: deb}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if k.Release != release || !strings.HasPrefix(k.Source, "import ") {
		t.Fatalf("kernel %+v", k)
	}
	if BzImageRelease(Image(k)) != release {
		t.Fatalf("stored kernel announces %q", BzImageRelease(Image(k)))
	}
	tree, err := os.ReadDir(Modules(k))
	if err != nil || len(tree) == 0 {
		t.Fatalf("modules: %v", err)
	}
	storeClean(t, s, "debk")
	// The generated initramfs resolves from the stored tree.
	if _, err := initrd.Build(t.TempDir(), initrd.Spec{Init: Image(k), Modules: Modules(k)}); err != nil {
		t.Fatal(err)
	}
}

// fetch uses a cached package only when its SHA256 is apt's; a damaged one
// is dropped and fetched again (here: a package apt does not know, so the
// error comes from apt-get without any network).
func TestFetchCache(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := Package{Name: "linux-image-banger-test-nonexistent", Version: "1:1.0"}
	if p.FileName() != "linux-image-banger-test-nonexistent_1%3a1.0.deb" {
		t.Fatalf("file name %s", p.FileName())
	}
	cached := filepath.Join(dir, p.FileName())
	os.WriteFile(cached, []byte("package bytes"), 0o644)
	p.SHA256, _ = fileSHA256(cached)
	deb, hit, err := fetch(ctx, p, dir)
	if err != nil || !hit || deb != cached {
		t.Fatalf("cached fetch: %s %v %v", deb, hit, err)
	}
	p.SHA256 = strings.Repeat("0", 64)
	if _, _, err := fetch(ctx, p, dir); err == nil || !strings.Contains(err.Error(), "apt-get download") {
		t.Fatalf("fetch of an unknown package: %v", err)
	}
	if _, err := os.Stat(cached); !os.IsNotExist(err) {
		t.Fatal("the damaged cached package was kept")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".download-*")); len(left) != 0 {
		t.Fatalf("download directories left: %v", left)
	}
}

// Canceling an import after any stage leaves no kernel, row or staging.
func TestImportCanceledMidway(t *testing.T) {
	src := t.TempDir()
	kmodtest.WriteBzImage(t, filepath.Join(src, "vmlinuz"), release)
	kmodtest.WriteGuestModules(t, filepath.Join(src, release), "")
	for _, at := range []string{StageCopy, StageCheck, StageModImage} {
		s := newStore(t)
		ctx, cancel := context.WithCancel(context.Background())
		report := func(st api.Stage) {
			if st.Name == at && st.State == "done" {
				cancel()
			}
		}
		_, err := s.Import(ctx, "k", Source{Kernel: filepath.Join(src, "vmlinuz"), Modules: filepath.Join(src, release)}, false, report)
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled after %s: %v", at, err)
		}
		storeClean(t, s)
		if ks, _ := s.List(context.Background()); len(ks) != 0 {
			t.Fatalf("rows after a canceled import: %+v", ks)
		}
	}
}
