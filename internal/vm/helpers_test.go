package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"banger/internal/config"
	"banger/internal/disk"
	"banger/internal/guest"
	"banger/internal/hostnet"
	"banger/internal/paths"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/vmm/qemu"
)

// testImage is the image newTestService registers; its rootfs is a sparse
// file of testImageSize bytes.
const (
	testImage     = "bangertest-img"
	testImageSize = 64 << 20
)

// newTestService composes a Service the way the daemon does, with a real
// SQLite store and a real paths layout under t.TempDir(). The QEMU driver is
// only constructed (that starts nothing); no test here reaches Start. The
// service has one image, testImage, and no image named "default".
func newTestService(t *testing.T) *Service {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	l := paths.Layout{
		ConfigDir: filepath.Join(root, "config"),
		StateDir:  filepath.Join(root, "state"),
		CacheDir:  filepath.Join(root, "cache"),
		RunDir:    filepath.Join(root, "run"),
	}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, l.Database())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keys, err := guest.LoadKeys(l.SSHKey(), l.KnownHosts())
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.Network.Bridge = "bangertest0"
	cfg.VM.VCPU = 1 // the default (2) would exceed a 1-CPU host
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	s := New(Deps{
		Config: cfg,
		Paths:  l,
		Store:  st,
		Driver: qemu.New(qemu.Options{Binary: "bangertest-no-such-qemu", Accel: "tcg", CacheDir: l.CacheDir, Log: log}),
		Disk:   disk.Backends()["copy"],
		Keys:   keys,
		Net:    hostnet.Config{Bridge: cfg.Network.Bridge, CIDR: cfg.CIDR(), TapPrefix: "bt"},
		Log:    log,
	})
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(sctx)
	})

	imDir := filepath.Join(root, "images")
	if err := os.MkdirAll(imDir, 0o700); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(imDir, "rootfs.ext4")
	kernel := filepath.Join(imDir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("bangertest kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(testImageSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := st.InsertImage(ctx, store.Image{Name: testImage, RootFS: rootfs, Kernel: kernel, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return s
}

// insertVM inserts a VM row directly (no resources) and returns it.
func insertVM(t *testing.T, s *Service, name, state string) store.VM {
	t.Helper()
	id := newID()
	v := store.VM{
		ID: id, Name: name, Image: testImage, State: state, VCPU: 1, MemoryMiB: 256,
		IP: fmt.Sprintf("10.213.0.%d", 100+len(listVMs(t, s))), MAC: macFor(id), Tap: s.Net.TapName(id), Driver: "qemu",
		Root: disk.Root{Backend: "copy"}, Dir: s.Paths.VMDir(id), WorkPath: s.Paths.VMDir(id) + "/work.ext4",
		CreatedAt: nowUTC(),
	}
	if err := s.Store.InsertVM(context.Background(), v); err != nil {
		t.Fatal(err)
	}
	return v
}

// listVMs returns every row in the store.
func listVMs(t *testing.T, s *Service) []store.VM {
	t.Helper()
	vms, err := s.Store.ListVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return vms
}

// wantCode fails unless err is an *rpc.Error with this code whose message
// contains every one of subs.
func wantCode(t *testing.T, err error, code int, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want code %d containing %q", code, subs)
	}
	var re *rpc.Error
	if !errors.As(err, &re) {
		t.Fatalf("error %q (%T) is not an *rpc.Error", err, err)
	}
	if re.Code != code {
		t.Fatalf("error %q has code %d, want %d", err, re.Code, code)
	}
	for _, sub := range subs {
		if !strings.Contains(err.Error(), sub) {
			t.Fatalf("error %q does not mention %q", err, sub)
		}
	}
}

// waitBlockedInLockVM waits (bounded) until n goroutines are parked in
// lockVM's select, i.e. really waiting for a VM lock.
func waitBlockedInLockVM(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1<<20)
	for {
		k := runtime.Stack(buf, true)
		got := 0
		for _, g := range strings.Split(string(buf[:k]), "\n\n") {
			header, _, _ := strings.Cut(g, "\n")
			if strings.Contains(header, "[select") && strings.Contains(g, "vm.(*Service).lockVM(") {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines waiting in lockVM after 10s, want %d", got, n)
		}
		runtime.Gosched()
	}
}
