package daemon

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/doctor"
	"banger/internal/paths"
	"banger/internal/rpc"
)

// pathWithout returns a PATH directory holding links to every tool the VM
// checks look for, except the excluded ones.
func pathWithout(t *testing.T, exclude ...string) string {
	dir := t.TempDir()
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4", "e2fsck", "resize2fs", "debugfs", "firecracker"} {
		if strings.Contains(strings.Join(exclude, " "), tool) {
			continue
		}
		if p, err := exec.LookPath(tool); err == nil {
			if err := os.Symlink(p, filepath.Join(dir, tool)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func TestPreflight(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatal("the test needs mkfs.ext4 installed (e2fsprogs)")
	}
	root := t.TempDir()
	env := doctor.NewEnv(paths.Layout{ConfigDir: root, StateDir: root, CacheDir: root, RunDir: root})
	env.LookPath = doctor.LookPathIn(pathWithout(t, "mkfs.ext4"))
	p := newPreflight(env)
	ctx := context.Background()

	err := p.run(ctx, VMChecks...)
	var re *rpc.Error
	if err == nil || !errors.As(err, &re) || re.Code != rpc.CodeFailedPrecondition ||
		!strings.Contains(err.Error(), "mkfs.ext4") || !strings.Contains(err.Error(), "e2fsprogs") {
		t.Fatalf("preflight without mkfs.ext4 = %v", err)
	}
	if p.passed["mkfs.ext4"] || !p.passed["tun"] {
		t.Fatalf("passed after one run: %v", p.passed)
	}
	// A failed check runs again: the fixed host passes at once.
	p.env.LookPath = doctor.LookPathIn(pathWithout(t))
	if err := p.run(ctx, VMChecks...); err != nil {
		t.Fatalf("preflight on a fixed host = %v", err)
	}
	// A passed check does not run again.
	p.env.LookPath = doctor.LookPathIn(t.TempDir())
	if err := p.run(ctx, VMChecks...); err != nil {
		t.Fatalf("preflight re-ran passed checks: %v", err)
	}
}
