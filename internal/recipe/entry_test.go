package recipe

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheck(t *testing.T) {
	if os.Getenv("BANGER_RECIPE_CHECK_AS_USER") == "1" {
		// Re-executed by this test as an ordinary user.
		_, err := Check(context.Background(), "debian-bookworm")
		if !errors.Is(err, ErrNotRoot) || !strings.Contains(err.Error(), "Dockerfile") {
			t.Fatalf("Check as uid %d = %v; want ErrNotRoot naming the Dockerfile", os.Geteuid(), err)
		}
		return
	}
	ctx := context.Background()
	if _, err := Check(ctx, "nope"); err == nil || !strings.Contains(err.Error(), "debian-bookworm") {
		t.Fatalf("Check(nope) = %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("the rest needs root")
	}
	if _, err := Check(ctx, "debian-bookworm"); err != nil {
		t.Fatalf("Check on this host (root, debootstrap, an apt source for bookworm): %v", err)
	}
	// As nobody: refused, naming the fix.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	// The test binary's own directory, and t.TempDir()'s parent, are root's alone.
	bin, err := os.MkdirTemp("", "bangertest-recipe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bin) })
	exe := filepath.Join(bin, "recipe.test")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^TestCheck$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BANGER_RECIPE_CHECK_AS_USER=1", "GOCOVERDIR="+bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("Check as nobody: %v\n%s", err, out)
	}

	// Build refuses a directory that is not empty and changes nothing.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Check(ctx, "debian-bookworm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(ctx, r, dir, Options{}, nil); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("Build into a non-empty directory = %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("Build changed %s: %v", dir, ents)
	}
}
