package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/vmm"
)

func TestMigrateAndRoundTrip(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := migrations()
	if v, _ := s.SchemaVersion(ctx); v != ms[len(ms)-1].version {
		t.Fatalf("schema version %d, want %d", v, ms[len(ms)-1].version)
	}
	im := Image{Name: "img", RootFS: "/r", Kernel: "/k", CreatedAt: time.Now()}
	if err := s.InsertImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertImage(ctx, im); err == nil {
		t.Fatal("duplicate image accepted")
	}
	v := VM{ID: "id1", Name: "a", Image: "img", State: "stopped", VCPU: 1, MemoryMiB: 256, IP: "10.0.0.2",
		MAC: "02:00:00:00:00:01", Tap: "bgtap1", Driver: "qemu", Root: disk.Root{Backend: "qcow2", Path: "/x"},
		WorkPath: "/w", Dir: "/d", CreatedAt: time.Now()}
	if err := s.InsertVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	dup := v
	dup.ID = "id2"
	dup.IP = "10.0.0.3"
	if err := s.InsertVM(ctx, dup); err == nil {
		t.Fatal("duplicate name accepted")
	}
	dup.Name = "b"
	dup.IP = v.IP
	if err := s.InsertVM(ctx, dup); err == nil {
		t.Fatal("duplicate ip accepted")
	}
	v.Handle = &vmm.Handle{Driver: "qemu", PID: 42, StartTime: 7}
	v.State = "running"
	v.Workspace = &api.Workspace{Source: "/src/repo", Dest: "/root/repo", BaseCommit: "abc", Files: 3}
	if err := s.UpdateVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Handle == nil || got.Handle.PID != 42 || got.Root.Backend != "qcow2" || got.State != "running" ||
		got.Workspace == nil || *got.Workspace != *v.Workspace {
		t.Fatalf("round trip: %+v", got)
	}
	if _, err := s.GetVM(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
	s.Close()

	// Reopen: migrations are not re-applied; read-only open refuses writes.
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	ro, err := OpenReadOnly(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if vms, err := ro.ListVMs(ctx); err != nil || len(vms) != 1 {
		t.Fatalf("read-only list: %v %v", vms, err)
	}
	if err := ro.DeleteVM(ctx, "id1"); err == nil {
		t.Fatal("read-only store accepted a write")
	}
}

func TestReadOnlyMissingFile(t *testing.T) {
	if _, err := OpenReadOnly(context.Background(), filepath.Join(t.TempDir(), "none.db")); err == nil {
		t.Fatal("read-only open of a missing database succeeded")
	}
}

func TestImageSourceFieldsRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	im := Image{Name: "pulled", RootFS: "/s/images/pulled/rootfs.ext4", Kernel: "/k", Managed: true, SizeBytes: 1 << 30,
		CreatedAt: time.Now(), Source: SourceOCI, Ref: "127.0.0.1:5000/x:1", Digest: "sha256:ab", Dir: "/s/images/pulled",
		ContentBytes: 12345, WorkSeed: "/s/images/pulled/work-seed.tar"}
	if err := s.InsertImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, "pulled")
	if err != nil {
		t.Fatal(err)
	}
	if got.Source != im.Source || got.Ref != im.Ref || got.Digest != im.Digest || got.Dir != im.Dir ||
		got.ContentBytes != im.ContentBytes || got.WorkSeed != im.WorkSeed {
		t.Fatalf("round trip: got %+v, want %+v", got, im)
	}
	reg := Image{Name: "reg", RootFS: "/r", Kernel: "/k", CreatedAt: time.Now()}
	if err := s.InsertImage(ctx, reg); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetImage(ctx, "reg"); got.Source != SourceRegistered {
		t.Fatalf("default source = %q, want %q", got.Source, SourceRegistered)
	}
	reg.Source, reg.Managed, reg.Dir = SourcePromoted, true, "/s/images/reg"
	if err := s.UpdateImage(ctx, reg); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetImage(ctx, "reg"); got.Source != SourcePromoted || !got.Managed || got.Dir != reg.Dir {
		t.Fatalf("after update: %+v", got)
	}
	if err := s.UpdateImage(ctx, Image{Name: "missing"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of a missing image: %v, want ErrNotFound", err)
	}
}
