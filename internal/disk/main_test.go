package disk

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testRoot holds every temp dir of this run (TMPDIR points at it, so
// t.TempDir too); TestMain fails the run if a mount or loop device under it
// survives the tests.
var testRoot string

func TestMain(m *testing.M) {
	root, err := os.MkdirTemp("", "bangertest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	testRoot = root
	os.Setenv("TMPDIR", root)
	code := m.Run()
	if leaks := leftovers(root); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: resources left behind under %s:\n  %s\n", root, strings.Join(leaks, "\n  "))
		code = 1
		releaseLeaks(root)
	}
	if len(mountsUnder(root)) == 0 {
		os.RemoveAll(root)
	}
	os.Exit(code)
}

// leftovers lists mounts and loop devices whose mount point or backing file is under root.
func leftovers(root string) []string {
	var out []string
	for _, mnt := range mountsUnder(root) {
		out = append(out, "mount "+mnt)
	}
	for loop, file := range loopsUnder(root) {
		out = append(out, "loop "+loop+" backed by "+file)
	}
	return out
}

func mountsUnder(root string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && under(root, unescapeMount(fields[4])) {
			out = append(out, unescapeMount(fields[4]))
		}
	}
	return out
}

// unescapeMount decodes mountinfo's octal escapes (\040 for space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func loopsUnder(root string) map[string]string {
	out := map[string]string{}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, p := range files {
		b, err := os.ReadFile(p)
		file := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if err == nil && under(root, file) {
			out["/dev/"+filepath.Base(filepath.Dir(filepath.Dir(p)))] = file
		}
	}
	return out
}

func under(root, p string) bool { return p == root || strings.HasPrefix(p, root+"/") }

// releaseLeaks is best effort, so a failed run does not leave the host dirty.
func releaseLeaks(root string) {
	mnts := mountsUnder(root)
	for i := len(mnts) - 1; i >= 0; i-- {
		_ = unix.Unmount(mnts[i], unix.MNT_DETACH)
	}
	for loop := range loopsUnder(root) {
		_ = exec.Command("losetup", "-d", loop).Run()
	}
}

// --- helpers shared by the tests ---

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (losetup, mount)")
	}
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(context.Background(), name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// makeBase makes a raw ext4 image of size bytes holding hello.txt and, if
// dataBytes > 0, a file of that many random bytes.
func makeBase(t *testing.T, dir string, size, dataBytes int64) string {
	t.Helper()
	needTools(t, "mkfs.ext4")
	stage := t.TempDir()
	if err := os.WriteFile(filepath.Join(stage, "hello.txt"), []byte("hello from the base\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if dataBytes > 0 {
		f, err := os.Create(filepath.Join(stage, "random.bin"))
		if err != nil {
			t.Fatal(err)
		}
		src, _ := os.Open("/dev/urandom")
		_, err = io.CopyN(f, src, dataBytes)
		src.Close()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "base.ext4")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "mkfs.ext4", "-q", "-F", "-d", stage, img)
	return img
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// allocated is the disk space a file really uses.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func size(t *testing.T, path string) int64 {
	t.Helper()
	n, err := fileSize(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func assertGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still exists (err=%v)", path, err)
	}
}

// mountXFS makes a 512 MiB reflink-enabled XFS in t.TempDir(), attaches it
// to a loop device and mounts it on a "bangertest-" dir. Cleanups (run in
// reverse) unmount, detach and delete, even when the test fails.
func mountXFS(t *testing.T) string {
	t.Helper()
	needRoot(t)
	needTools(t, "mkfs.xfs", "losetup")
	img := filepath.Join(t.TempDir(), "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 512<<20); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "mkfs.xfs", "-q", "-m", "reflink=1", img)
	loop := strings.TrimSpace(mustRun(t, "losetup", "--find", "--show", img))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", loop, err, out)
		}
	})
	mnt, err := os.MkdirTemp("", "bangertest-xfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(mnt) })
	if err := unix.Mount(loop, mnt, "xfs", 0, ""); err != nil {
		t.Fatalf("mount %s on %s: %v", loop, mnt, err)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	return mnt
}

func unmount(t *testing.T, mnt string) {
	var err error
	for i := 0; i < 20; i++ {
		if err = unix.Unmount(mnt, 0); err == nil || !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("unmount %s: %v", mnt, err)
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
	}
}

func isRoot() bool { return os.Geteuid() == 0 }
