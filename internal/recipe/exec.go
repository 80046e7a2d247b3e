package recipe

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// lookTool finds a tool in PATH or, because a daemon's PATH may lack them,
// in the sbin directories.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or the sbin directories (on Debian: apt-get install %s)", name, debianPackageOf(name))
}

func debianPackageOf(tool string) string {
	switch tool {
	case "chroot", "cp":
		return "coreutils"
	case "dpkg-query":
		return "dpkg"
	case "apt-get", "apt-config":
		return "apt"
	}
	return tool
}

// toolIO is optional extra environment and a log for a tool's output.
type toolIO struct {
	env []string
	log io.Writer
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

// runTool runs a tool with argv in its own process group, which is killed
// as a whole when ctx ends (debootstrap runs dpkg and package scripts as
// children). It returns stdout; an error names the command and carries the
// tail of its output.
func runTool(ctx context.Context, tio *toolIO, name string, args ...string) ([]byte, error) {
	bin, err := lookTool(name)
	if err != nil {
		return nil, err
	}
	var stdout bytes.Buffer
	tail := &tailBuffer{max: 4096}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
	var out io.Writer = tail
	if tio != nil {
		cmd.Env = append(cmd.Env, tio.env...)
		if tio.log != nil {
			out = io.MultiWriter(tail, tio.log)
		}
		cmd.Stdout = out
	} else {
		cmd.Stdout = io.MultiWriter(&stdout, tail)
	}
	cmd.Stderr = out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", name, ctx.Err())
		}
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(tail.b)))
	}
	return stdout.Bytes(), nil
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// detachMounts lazily unmounts everything mounted under dir (debootstrap
// mounts /proc and /sys in its target; a killed run leaves them).
func detachMounts(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	for _, mp := range mps {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
	if left, err := mountsUnder(dir); err != nil || len(left) > 0 {
		return fmt.Errorf("mounts left under %s: %v %v", dir, left, err)
	}
	return nil
}

// removeTree removes dir after detaching any mount under it, so nothing is
// ever deleted through a mount.
func removeTree(dir string) error {
	if _, err := os.Lstat(dir); os.IsNotExist(err) {
		return nil
	}
	if err := detachMounts(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}
