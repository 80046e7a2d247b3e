package oci

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The package must work as an ordinary user: no call in it may change
// owners, make device nodes or mount anything. (Tests may.)
func TestNoPrivilegedCalls(t *testing.T) {
	banned := map[string]bool{"Chown": true, "Lchown": true, "Fchown": true, "Fchownat": true,
		"Mknod": true, "Mknodat": true, "Mkfifo": true, "Mount": true, "Setuid": true, "Setgid": true}
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok && banned[sel.Sel.Name] {
				t.Errorf("%s: calls %s", fset.Position(sel.Pos()), sel.Sel.Name)
			}
			return true
		})
	}
}

const childEnv = "BANGER_OCI_UNPRIVILEGED_CHILD"

// TestUnprivileged runs the whole pipeline as nobody (65534) in a child
// test process when the tests run as root, and checks the ownership it
// produced from the image. Run as an ordinary user, every test here
// already is that check.
func TestUnprivileged(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("already unprivileged: every other test covers this")
	}
	needE2fsprogs(t)
	work, err := os.MkdirTemp("", "banger-oci-nobody-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(work, "oci.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(work, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{work, home} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 65534, 65534); err != nil { // the test, not the package
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "-test.run=^TestUnprivilegedChild$", "-test.v", "-test.count=1")
	cmd.Dir = work
	// An ordinary user's PATH: the package must find e2fsprogs in /usr/sbin itself.
	cmd.Env = []string{childEnv + "=" + work, "HOME=" + home, "TMPDIR=" + work, "PATH=/usr/local/bin:/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestUnprivilegedChild") {
		t.Fatalf("child failed: %v", err)
	}
	img := filepath.Join(work, "rootfs.ext4")
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 {
		t.Errorf("image owned by %d, want the unprivileged user", st.Uid)
	}
	checkOwners(t, img)
}

// TestUnprivilegedChild is the child half of TestUnprivileged.
func TestUnprivilegedChild(t *testing.T) {
	work := os.Getenv(childEnv)
	if work == "" {
		t.Skip("only run by TestUnprivileged")
	}
	if os.Geteuid() == 0 {
		t.Fatal("child runs as root")
	}
	reg := startRegistry(t)
	ref := pushLayers(t, reg, "test/nobody:v1", fullImageTars(t)...)
	if _, _, err := convert(t.Context(), ref, filepath.Join(work, "cache"), filepath.Join(work, "rootfs.ext4")); err != nil {
		t.Fatal(err)
	}
	checkOwners(t, filepath.Join(work, "rootfs.ext4"))
}

func checkOwners(t *testing.T, img string) {
	t.Helper()
	for p, w := range map[string][3]int{
		"/usr/bin/su":      {0o4755, 0, 0},
		"/etc/shadow":      {0o640, 0, 0},
		"/home/user/notes": {0o600, 1000, 1000},
		"/":                {0o755, 0, 0},
	} {
		in := stat(t, img, p)
		if in == nil || int(in.Mode) != w[0] || in.UID != w[1] || in.GID != w[2] {
			t.Errorf("%s: %+v, want %04o %d:%d", p, in, w[0], w[1], w[2])
		}
	}
	if got := debugfsR(t, img, "ea_list /usr/bin/ping"); !strings.Contains(got, "security.capability") {
		t.Errorf("security.capability lost:\n%s", got)
	}
}
