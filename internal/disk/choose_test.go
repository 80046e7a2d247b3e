package disk

import (
	"errors"
	"strings"
	"testing"
)

func dmAvailable() bool { return dmBackend{}.Available("") == nil }

func TestChooseAuto(t *testing.T) {
	ext4 := t.TempDir()
	if fsType(ext4) != "ext4" {
		t.Skipf("temp dir is on %s, not ext4", fsType(ext4))
	}
	fcOnExt4 := "copy"
	if dmAvailable() {
		fcOnExt4 = "dm"
	}
	cases := []struct{ vmm, dir, want string }{
		{"qemu", ext4, "qcow2"},
		{"firecracker", ext4, fcOnExt4},
	}
	if xfs := mountXFSIfRoot(t); xfs != "" {
		fcOnXFS := "reflink"
		if dmAvailable() {
			fcOnXFS = "dm"
		}
		cases = append(cases,
			struct{ vmm, dir, want string }{"qemu", xfs, "reflink"},
			struct{ vmm, dir, want string }{"firecracker", xfs, fcOnXFS})
	}
	for _, c := range cases {
		for _, name := range []string{"", "auto"} {
			b, reason, err := Choose(name, c.vmm, c.dir)
			if err != nil {
				t.Fatalf("Choose(%q, %s, %s): %v", name, c.vmm, c.dir, err)
			}
			if b.Name() != c.want {
				t.Errorf("Choose(%q, %s, %s) = %s, want %s (%s)", name, c.vmm, c.dir, b.Name(), c.want, reason)
			}
			if !strings.HasPrefix(reason, "auto for "+c.vmm) {
				t.Errorf("reason = %q", reason)
			}
			t.Logf("%s on %s: %s: %s", c.vmm, fsType(c.dir), b.Name(), reason)
		}
	}
}

func mountXFSIfRoot(t *testing.T) string {
	if !isRoot() {
		return ""
	}
	return mountXFS(t)
}

func TestChooseExplicit(t *testing.T) {
	dir := t.TempDir()
	b, reason, err := Choose("copy", "firecracker", dir)
	if err != nil || b.Name() != "copy" || !strings.Contains(reason, "configured") {
		t.Fatalf("Choose(copy, firecracker) = %v, %q, %v", b, reason, err)
	}
	_, _, err = Choose("qcow2", "firecracker", dir)
	if err == nil || !strings.Contains(err.Error(), "firecracker") || !strings.Contains(err.Error(), `"auto"`) {
		t.Fatalf("Choose(qcow2, firecracker) = %v", err)
	}
	t.Log(err)
	if fsType(dir) == "ext4" {
		_, _, err = Choose("reflink", "qemu", dir)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "choose") {
			t.Fatalf("Choose(reflink, qemu) on ext4 = %v", err)
		}
		t.Log(err)
	}
	if !dmAvailable() {
		if _, _, err = Choose("dm", "firecracker", dir); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Choose(dm) without device-mapper = %v", err)
		}
		t.Log(err)
	}
	for _, c := range [][2]string{{"zfs", "qemu"}, {"auto", "bhyve"}} {
		if _, _, err := Choose(c[0], c[1], dir); err == nil {
			t.Fatalf("Choose(%s, %s) succeeded", c[0], c[1])
		}
	}
	if len(Backends()) != 4 {
		t.Fatalf("Backends() = %v", Backends())
	}
	for name, b := range Backends() {
		if b.Name() != name {
			t.Fatalf("backend %q names itself %q", name, b.Name())
		}
	}
}
