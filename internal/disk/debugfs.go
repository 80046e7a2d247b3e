package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// debugfs exits 0 even when a command fails, so its stderr is the only
// error signal: every line but the version banner is an error.
var debugfsBanner = regexp.MustCompile(`^debugfs \d+\.\d+`)

// Lookups of missing paths, expected when probing with stat.
var debugfsNotFound = regexp.MustCompile(`File not found by ext2_lookup|Ext2 inode is not a directory`)

// debugfsScript runs a batch of debugfs commands against img (read-write
// when write is set) and fails if any command reported an error that
// ignore (may be nil) does not match. It returns debugfs's stdout.
func debugfsScript(ctx context.Context, img string, write bool, ignore *regexp.Regexp, cmds []string) ([]byte, error) {
	f, err := os.CreateTemp("", "banger-debugfs-*.txt")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(strings.Join(cmds, "\n") + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	args := []string{"-f", f.Name(), img}
	if write {
		args = append([]string{"-w"}, args...)
	}
	return debugfs(ctx, ignore, args...)
}

// debugfs runs the tool and turns unexpected stderr lines into an error.
func debugfs(ctx context.Context, ignore *regexp.Regexp, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "debugfs", args...)
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var bad []string
	for _, line := range strings.Split(stderr.String(), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !debugfsBanner.MatchString(line) && (ignore == nil || !ignore.MatchString(line)) {
			bad = append(bad, line)
		}
	}
	if err == nil && len(bad) > 0 {
		err = errors.New("reported errors")
	}
	if err != nil {
		return nil, cmdError("debugfs", args, err, strings.Join(bad, "\n"))
	}
	return stdout.Bytes(), nil
}

var typeRE = regexp.MustCompile(`Type: (\S+)`)

// inodeTypes stats paths in one read-only debugfs run and returns each
// existing path's type ("regular", "directory", "symlink", ...).
func inodeTypes(ctx context.Context, img string, paths []string) (map[string]string, error) {
	cmds := make([]string, len(paths))
	for i, p := range paths {
		cmds[i] = "stat " + q(p)
	}
	out, err := debugfsScript(ctx, img, false, debugfsNotFound, cmds)
	if err != nil {
		return nil, err
	}
	// debugfs echoes each command ("debugfs: stat ...") before its output.
	sections := regexp.MustCompile(`(?m)^debugfs: `).Split(string(out), -1)[1:]
	if len(sections) != len(paths) {
		return nil, fmt.Errorf("debugfs stat: got %d answers for %d paths", len(sections), len(paths))
	}
	types := map[string]string{}
	for i, sec := range sections {
		if m := typeRE.FindStringSubmatch(sec); m != nil {
			types[paths[i]] = m[1]
		}
	}
	return types, nil
}

// diskPath validates a File path and returns it absolute within the disk,
// e.g. ".ssh/authorized_keys" -> "/.ssh/authorized_keys".
func diskPath(p string) (string, error) {
	rel := filepath.Clean(strings.TrimLeft(p, "/"))
	if !filepath.IsLocal(rel) || rel == "." {
		return "", fmt.Errorf("path %q: must name a file inside the disk", p)
	}
	if strings.ContainsFunc(rel, func(r rune) bool { return r < 0x20 || r == '"' || r == '\\' || r == 0x7f }) {
		return "", fmt.Errorf("path %q: quotes, backslashes and control characters are not supported", p)
	}
	return "/" + rel, nil
}

// q quotes a path for debugfs's argument parser (diskPath rules out quotes).
func q(p string) string { return `"` + p + `"` }

// inodeMode converts an os.FileMode into an ext4 i_mode (type and permission bits).
func inodeMode(m os.FileMode) (uint32, error) {
	v := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		v |= 0o1000
	}
	switch {
	case m.IsDir():
		return v | 0o040000, nil
	case m.IsRegular():
		return v | 0o100000, nil
	}
	return 0, fmt.Errorf("mode %v: only regular files and directories are supported", m)
}

// setAttrs returns the debugfs commands that set mode, uid and gid of p.
func setAttrs(p string, mode uint32, uid, gid int) []string {
	return []string{
		fmt.Sprintf("sif %s mode 0%o", q(p), mode),
		fmt.Sprintf("sif %s uid %d", q(p), uid),
		fmt.Sprintf("sif %s gid %d", q(p), gid),
	}
}
