package workspace

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// testEnv isolates git from the host's configuration: a temporary global
// config with an identity, no system config, a temporary HOME.
func testEnv(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gitconfig")
	writeFile(t, cfg, "[user]\n\tname = Test User\n\temail = test@example.com\n"+
		"[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n", 0o644)
	t.Setenv("GIT_CONFIG_GLOBAL", cfg)
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	t.Setenv("HOME", dir)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "xdg"))
	for _, v := range repoEnvVars {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// run runs a command in dir and returns its stdout; it fails the test on a
// non-zero exit.
func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	out, err := runErr(dir, nil, name, args...)
	if err != nil {
		t.Fatalf("%s %s (in %s): %v", name, strings.Join(args, " "), dir, err)
	}
	return out
}

func runErr(dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), &runError{err: err, stderr: errb.String()}
	}
	return out.String(), nil
}

type runError struct {
	err    error
	stderr string
}

func (e *runError) Error() string { return e.err.Error() + ": " + e.stderr }

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	return strings.TrimSpace(run(t, dir, "git", args...))
}

func writeFile(t *testing.T, p, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, p string) {
	t.Helper()
	os.Remove(p)
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func binaryData(seed byte, n int) string {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
		if i%7 == 0 {
			b[i] = 0
		}
	}
	return string(b)
}

// node is a file or symlink as compared between trees.
type node struct {
	Kind string // "file" or "symlink"
	Exec bool   // owner executable bit, files only
	Data string // contents or link target
}

// tree reads every file and symlink under root except .git and the
// paths skip says to ignore.
func tree(t *testing.T, root string, skip ...string) map[string]node {
	t.Helper()
	skipSet := map[string]bool{}
	for _, s := range skip {
		skipSet[s] = true
	}
	m := map[string]node{}
	err := filepath.WalkDir(root, func(abs string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, abs)
		rel = filepath.ToSlash(rel)
		if rel == ".git" || skipSet[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(abs)
			if err != nil {
				return err
			}
			m[rel] = node{Kind: "file", Exec: fi.Mode()&0o100 != 0, Data: string(b)}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(abs)
			if err != nil {
				return err
			}
			m[rel] = node{Kind: "symlink", Data: target}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sameTree(t *testing.T, what string, got, want map[string]node) {
	t.Helper()
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			diffs = append(diffs, "missing "+p)
		case g.Kind != w.Kind:
			diffs = append(diffs, p+": kind "+g.Kind+", want "+w.Kind)
		case g.Exec != w.Exec:
			diffs = append(diffs, p+": executable bit differs")
		case g.Data != w.Data:
			diffs = append(diffs, p+": contents differ")
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, "unexpected "+p)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		t.Fatalf("%s: trees differ:\n  %s", what, strings.Join(diffs, "\n  "))
	}
}

func keys(m map[string]node) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// objectFiles lists the files under a repository's objects directory.
func objectFiles(t *testing.T, gitDir string) []string {
	t.Helper()
	var fs []string
	filepath.WalkDir(filepath.Join(gitDir, "objects"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			fs = append(fs, p)
		}
		return nil
	})
	sort.Strings(fs)
	return fs
}

// applyPatch applies patch in dir with git apply (checked first).
func applyPatch(t *testing.T, dir string, patch []byte, env ...string) {
	t.Helper()
	pf := filepath.Join(t.TempDir(), "changes.patch")
	if err := os.WriteFile(pf, patch, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runErr(dir, env, "git", "apply", "--check", pf); err != nil {
		t.Fatalf("git apply --check: %v\n%s\npatch:\n%s", err, out, patch)
	}
	if out, err := runErr(dir, env, "git", "apply", pf); err != nil {
		t.Fatalf("git apply: %v\n%s", err, out)
	}
}
