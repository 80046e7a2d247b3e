package disk

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJtest banger@test\n"

func TestWorkDisk(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs", "e2fsck", "resize2fs", "dumpe2fs")
	ctx := context.Background()
	dir := t.TempDir()
	seed := t.TempDir()
	if err := os.WriteFile(filepath.Join(seed, ".bashrc"), []byte("export X=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(seed, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(seed, "bin", "tool"), []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(".bashrc", filepath.Join(seed, "rc")); err != nil {
		t.Fatal(err)
	}
	files := []File{
		{Path: ".ssh", Mode: os.ModeDir | 0o700},
		{Path: ".ssh/authorized_keys", Mode: 0o600, Data: []byte(testKey)},
		{Path: "data/owned.txt", Mode: 0o640, Data: []byte("mine\n"), UID: 1000, GID: 1001},
	}
	img := filepath.Join(dir, "work.ext4")

	start := time.Now()
	if err := CreateWorkDisk(ctx, img, 256<<20, seed, files); err != nil {
		t.Fatal(err)
	}
	t.Logf("CreateWorkDisk 256 MiB (mkfs.ext4 -d + debugfs): %v", time.Since(start))
	if size(t, img) != 256<<20 {
		t.Fatalf("size = %d", size(t, img))
	}
	assertOnly(t, dir, "work.ext4")
	mustRun(t, "e2fsck", "-fn", img)
	if out := mustRun(t, "dumpe2fs", "-h", img); !regexp.MustCompile(`volume name:\s+banger-work\n`).MatchString(out) {
		t.Fatal("label is not banger-work")
	}
	assertFile(t, img, ".ssh/authorized_keys", testKey)
	assertFile(t, img, ".bashrc", "export X=1\n")
	assertFile(t, img, "bin/tool", "#!/bin/sh\necho hi\n")
	assertInode(t, img, "/", "directory", 0o700, 0, 0)
	assertInode(t, img, ".ssh", "directory", 0o700, 0, 0)
	assertInode(t, img, ".ssh/authorized_keys", "regular", 0o600, 0, 0)
	assertInode(t, img, "data/owned.txt", "regular", 0o640, 1000, 1001)
	assertInode(t, img, "data", "directory", 0o755, 0, 0)
	assertInode(t, img, "bin/tool", "regular", 0o755, 0, 0)
	assertInode(t, img, "rc", "symlink", 0o777, 0, 0)
	if _, err := ReadFile(ctx, img, "nope"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("ReadFile of a missing file = %v", err)
	}

	// Never replaces an existing disk.
	if err := CreateWorkDisk(ctx, img, 256<<20, "", nil); err == nil {
		t.Fatal("CreateWorkDisk over an existing disk succeeded")
	}
	assertFile(t, img, ".bashrc", "export X=1\n")

	// WriteFiles replaces and adds, creating parents.
	newKey := "ssh-ed25519 AAAAnewkey banger@test\n"
	err := WriteFiles(ctx, img, []File{
		{Path: ".ssh/authorized_keys", Mode: 0o600, Data: []byte(newKey)},
		{Path: "/new/deep/file.txt", Mode: 0o644, Data: []byte("deep\n"), UID: 1000, GID: 1000},
		{Path: "new/dir", Mode: os.ModeDir | 0o750, UID: 1000},
		{Path: "empty", Mode: 0o600},
	})
	if err != nil {
		t.Fatal(err)
	}
	assertFile(t, img, ".ssh/authorized_keys", newKey)
	assertFile(t, img, "new/deep/file.txt", "deep\n")
	assertFile(t, img, "empty", "")
	assertInode(t, img, ".ssh/authorized_keys", "regular", 0o600, 0, 0)
	assertInode(t, img, "new/deep/file.txt", "regular", 0o644, 1000, 1000)
	assertInode(t, img, "new/deep", "directory", 0o755, 0, 0)
	assertInode(t, img, "new/dir", "directory", 0o750, 1000, 0)
	mustRun(t, "e2fsck", "-fn", img)
	// Conflicts are refused before anything changes.
	for _, f := range []File{{Path: ".ssh", Mode: 0o600}, {Path: ".bashrc/x", Mode: 0o600}, {Path: "empty", Mode: os.ModeDir | 0o700}} {
		err := WriteFiles(ctx, img, []File{{Path: "first", Mode: 0o600}, f})
		if err == nil || !strings.Contains(err.Error(), "exists and is not") {
			t.Fatalf("WriteFiles(%s) = %v", f.Path, err)
		}
		t.Log(err)
		if _, err := ReadFile(ctx, img, "first"); err == nil {
			t.Fatal("a refused WriteFiles changed the disk")
		}
	}
	assertInode(t, img, ".ssh", "directory", 0o700, 0, 0)
	if err := WriteFiles(ctx, img, []File{{Path: "../escape", Mode: 0o600}}); err == nil {
		t.Fatal("path outside the disk accepted")
	}

	// Grow, and refuse to shrink.
	before := blockCount(t, img)
	if err := GrowWorkDisk(ctx, img, 512<<20); err != nil {
		t.Fatal(err)
	}
	if after := blockCount(t, img); after <= before || size(t, img) != 512<<20 {
		t.Fatalf("grow: blocks %d -> %d, size %d", before, after, size(t, img))
	}
	assertFile(t, img, ".ssh/authorized_keys", newKey)
	err = GrowWorkDisk(ctx, img, 256<<20)
	if err == nil || !strings.Contains(err.Error(), "refusing to shrink") {
		t.Fatalf("shrink = %v", err)
	}
	t.Log(err)
	if size(t, img) != 512<<20 {
		t.Fatal("refused shrink changed the size")
	}
	if err := GrowWorkDisk(ctx, img, 512<<20); err != nil { // same size: no-op
		t.Fatal(err)
	}
}

// TestWorkDiskRollback: a failing create leaves nothing behind.
func TestWorkDiskRollback(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	ctx := context.Background()
	dir := t.TempDir()
	img := filepath.Join(dir, "work.ext4")
	bad := [][]File{
		{{Path: "../x", Mode: 0o600}},
		{{Path: "dev", Mode: os.ModeDevice | 0o600}},
	}
	for _, files := range bad {
		if err := CreateWorkDisk(ctx, img, 64<<20, "", files); err == nil {
			t.Fatalf("CreateWorkDisk(%v) succeeded", files)
		}
		assertOnly(t, dir)
	}
	// Too small for mkfs: fails in mkfs.
	err := CreateWorkDisk(ctx, img, 4096, "", nil)
	if err == nil || !strings.Contains(err.Error(), "mkfs.ext4") {
		t.Fatalf("tiny disk = %v", err)
	}
	t.Log(err)
	assertOnly(t, dir)
	if err := CreateWorkDisk(ctx, img, 64<<20, filepath.Join(dir, "missing-seed"), nil); err == nil {
		t.Fatal("missing seed dir accepted")
	}
	assertOnly(t, dir)
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
}

func assertFile(t *testing.T, img, path, want string) {
	t.Helper()
	got, err := ReadFile(context.Background(), img, path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s = %q, want %q", path, got, want)
	}
}

var statRE = regexp.MustCompile(`Type: (\S+)\s+Mode:\s+(\d+)[\s\S]*?User:\s+(\d+)\s+Group:\s+(\d+)`)

// assertInode checks type, permissions and owner with debugfs stat.
func assertInode(t *testing.T, img, path, typ string, perm os.FileMode, uid, gid int) {
	t.Helper()
	p := "/"
	if path != "/" {
		p, _ = diskPath(path)
	}
	out, err := debugfs(context.Background(), nil, "-R", "stat "+q(p), img)
	if err != nil {
		t.Fatal(err)
	}
	m := statRE.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("stat %s: %s", path, out)
	}
	mode, _ := strconv.ParseUint(m[2], 8, 32)
	if m[1] != typ || os.FileMode(mode) != perm || m[3] != strconv.Itoa(uid) || m[4] != strconv.Itoa(gid) {
		t.Fatalf("%s: type %s mode %s uid %s gid %s; want %s %04o %d %d", path, m[1], m[2], m[3], m[4], typ, perm, uid, gid)
	}
}

func blockCount(t *testing.T, img string) int64 {
	t.Helper()
	m := regexp.MustCompile(`Block count:\s+(\d+)`).FindStringSubmatch(mustRun(t, "dumpe2fs", "-h", img))
	if m == nil {
		t.Fatal("no block count")
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// An image's /root read back with ExtractDir seeds a work disk; a seed
// whose symlinks point out of it cannot make banger's files land outside.
func TestExtractDirSeedsWorkDisk(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	ctx := context.Background()
	dir := t.TempDir()
	img := filepath.Join(dir, "image.ext4")
	if err := CreateWorkDisk(ctx, img, 64<<20, "", []File{
		{Path: "root", Mode: os.ModeDir | 0o700},
		{Path: "root/.bashrc", Mode: 0o644, Data: []byte("PS1='x '\n")},
		{Path: "root/.config/app.toml", Mode: 0o600, Data: []byte("k = 1\n")},
		{Path: "etc/hostname", Mode: 0o644, Data: []byte("img\n")},
	}); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	seed, err := ExtractDir(ctx, img, "/root", out)
	if err != nil {
		t.Fatal(err)
	}
	if seed != filepath.Join(out, "root") {
		t.Fatalf("seed = %q", seed)
	}
	if b, err := os.ReadFile(filepath.Join(seed, ".config/app.toml")); err != nil || string(b) != "k = 1\n" {
		t.Fatalf("extracted .config/app.toml = %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(seed, ".config/app.toml")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("extracted mode: %v %v", fi, err)
	}
	if missing, err := ExtractDir(ctx, img, "/nope", t.TempDir()); err != nil || missing != "" {
		t.Fatalf("ExtractDir of a missing directory = %q, %v; want \"\", nil", missing, err)
	}
	if f, err := ExtractDir(ctx, img, "/etc/hostname", t.TempDir()); err != nil || f != "" {
		t.Fatalf("ExtractDir of a file = %q, %v; want \"\", nil", f, err)
	}

	work := filepath.Join(dir, "work.ext4")
	if err := CreateWorkDisk(ctx, work, 64<<20, seed, []File{
		{Path: ".ssh", Mode: os.ModeDir | 0o700},
		{Path: ".ssh/authorized_keys", Mode: 0o600, Data: []byte(testKey)},
	}); err != nil {
		t.Fatal(err)
	}
	assertFile(t, work, ".bashrc", "PS1='x '\n")
	assertFile(t, work, ".config/app.toml", "k = 1\n")
	assertFile(t, work, ".ssh/authorized_keys", testKey)

	outside := t.TempDir()
	hostile := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(hostile, ".ssh")); err != nil {
		t.Fatal(err)
	}
	err = CreateWorkDisk(ctx, filepath.Join(dir, "hostile.ext4"), 64<<20, hostile, []File{
		{Path: ".ssh/authorized_keys", Mode: 0o600, Data: []byte(testKey)},
	})
	if err == nil {
		t.Fatal("a seed with .ssh -> outside directory was accepted")
	}
	assertOnly(t, outside)
	if _, err := os.Stat(filepath.Join(dir, "hostile.ext4")); err == nil {
		t.Fatal("hostile.ext4 left behind")
	}
	t.Logf("refused: %v", err)
}

// TestExtractDirUnprivileged: a daemon that is not root extracts an image's
// root-owned /root (rdump cannot chown; the copy is still complete). The
// extraction runs in a child test process as uid/gid 65534.
func TestExtractDirUnprivileged(t *testing.T) {
	if img := os.Getenv("BANGER_TEST_EXTRACT_IMG"); img != "" { // the child
		seed, err := ExtractDir(context.Background(), img, "/root", os.Getenv("BANGER_TEST_EXTRACT_DIR"))
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(seed, ".bashrc")); err != nil || string(b) != "PS1='x '\n" {
			t.Fatalf("extracted .bashrc = %q, %v", b, err)
		}
		return
	}
	needTools(t, "mkfs.ext4", "debugfs")
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root (it starts its child as uid 65534)")
	}
	// A directory uid 65534 can reach: the test binary, the image, the output.
	dir, err := os.MkdirTemp("/tmp", "bangertest-extract-") // not $TMPDIR: it may be private (0700)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	out := filepath.Join(dir, "out")
	for _, d := range []string{dir, out} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "image.ext4")
	if err := CreateWorkDisk(context.Background(), img, 32<<20, "", []File{
		{Path: "root", Mode: os.ModeDir | 0o700},
		{Path: "root/.bashrc", Mode: 0o644, Data: []byte("PS1='x '\n")},
	}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(img, 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "disk.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestExtractDirUnprivileged$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BANGER_TEST_EXTRACT_IMG="+img, "BANGER_TEST_EXTRACT_DIR="+out, "TMPDIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ExtractDir as uid 65534: %v\n%s", err, b)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(out, "root", ".bashrc"), &st); err != nil || st.Uid != 65534 {
		t.Fatalf("the child's copy: uid %d, %v", st.Uid, err)
	}
}
