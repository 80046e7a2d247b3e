package e2e

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkspace copies a repository with awkward content into a guest
// (`vm run PATH`), runs its tests there, makes changes in the guest, and
// checks the exported patch rebuilds the guest's tree exactly on the host.
func TestWorkspace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.registerImage()
	repo := makeRepo(t)

	// The repository's own tests run in the guest, in the repository.
	r := e.run("vm", "run", "--rm", repo, "--", "make", "test")
	if r.code != 0 {
		t.Fatalf("vm run --rm REPO -- make test: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	assertContains(t, "make test output", r.stdout, "repo tests passed in /root/repo")
	if vms := e.list(); len(vms) != 0 {
		t.Fatalf("vm run --rm left VMs: %+v", vms)
	}

	e.must("vm", "run", "-d", "--name", "ws", "--include-untracked", repo)
	ws := e.show("ws").Workspace
	if ws == nil || ws.BaseCommit != gitOut(t, repo, "rev-parse", "HEAD") || ws.Dest != "/root/repo" {
		t.Fatalf("workspace on vm show: %+v", ws)
	}
	got := e.must("vm", "exec", "ws", "sh", "-c", `pwd; ls -A | sort; test -x tool.sh && echo exec-kept; sha256sum blob.bin; git log --format=%H -1`)
	want := strings.Join([]string{"/root/repo", ".git", ".gitignore", "Makefile", "blob.bin", "dir with space", "renamed.txt", "tool.sh", "untracked.txt",
		"exec-kept", sha256sum(t, filepath.Join(repo, "blob.bin")) + "  blob.bin", ws.BaseCommit}, "\n") + "\n"
	if got != want {
		t.Fatalf("guest workspace:\n%s\nwant:\n%s", got, want)
	}

	// Work in the guest: a commit, then uncommitted changes of every kind.
	e.must("vm", "exec", "ws", "sh", "-c", `set -e
		git config user.email g@example.com; git config user.name guest
		echo committed >> renamed.txt; git commit -qam "guest commit"
		printf '\001\002\377binary\000' > new.bin
		git mv tool.sh tools.sh; chmod -x tools.sh
		rm Makefile
		chmod +x renamed.txt
		echo naïve > "dir with space/naïve file.txt"
		echo "new file" > "ünïcode ñame.txt"`)
	patch := filepath.Join(testRoot, t.Name()+".patch")
	e.must("vm", "workspace", "export", "ws", "--base-commit", ws.BaseCommit, "-o", patch)

	clean := filepath.Join(t.TempDir(), "clean")
	git(t, "", "clone", "-q", repo, clean)
	git(t, clean, "checkout", "-q", ws.BaseCommit)
	git(t, clean, "apply", "--check", patch)
	git(t, clean, "apply", patch)

	guestTree := filepath.Join(t.TempDir(), "guest")
	os.MkdirAll(guestTree, 0o755)
	tarOut := e.cmd("vm", "exec", "ws", "tar", "-c", "--exclude=./.git", ".")
	untar := exec.Command("tar", "-x", "-C", guestTree)
	untar.Stdin, _ = tarOut.StdoutPipe()
	if err := untar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := tarOut.Run(); err != nil {
		t.Fatal(err)
	}
	if err := untar.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"new.bin", "ünïcode ñame.txt", "tools.sh", "dir with space/naïve file.txt"} {
		if _, err := os.Stat(filepath.Join(guestTree, f)); err != nil {
			t.Fatalf("the guest's tree lacks %s, which the guest made: %v", f, err)
		}
	}
	if diff := compareTrees(t, guestTree, clean); diff != "" {
		t.Fatalf("base + exported patch differs from the guest's tree:\n%s", diff)
	}
	if r := e.run("vm", "workspace", "export", "nosuch"); r.code == 0 {
		t.Fatal("export of a missing VM succeeded")
	}

	// A repository that pins tool versions gets `mise install` started in the
	// background when the image has mise (here a stand-in that records its run).
	e.must("vm", "exec", "ws", "sh", "-c", `mkdir -p /usr/local/bin && printf '#!/bin/sh\necho "mise $* in $(pwd)" > /root/mise-ran\n' > /usr/local/bin/mise && chmod +x /usr/local/bin/mise`)
	if err := os.WriteFile(filepath.Join(repo, ".tool-versions"), []byte("golang 1.26.8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = e.run("vm", "workspace", "prepare", "ws", repo, "--dest", "/root/pinned")
	if r.code != 0 {
		t.Fatalf("workspace prepare of a repo with .tool-versions: exit %d %s", r.code, r.stderr)
	}
	assertContains(t, "workspace prepare output", r.stderr, "mise install")
	ran := e.must("vm", "exec", "ws", "sh", "-c", "for i in $(seq 100); do test -s /root/mise-ran && break; sleep 0.1; done; cat /root/mise-ran")
	if ran != "mise install in /root/pinned\n" {
		t.Fatalf("the stand-in mise recorded %q", ran)
	}
}

// makeRepo builds a repository with a binary file, a rename, a deletion, an
// executable, a name with spaces and non-ASCII, an untracked file and an
// ignored .env.
func makeRepo(t *testing.T) string {
	repo := filepath.Join(testRoot, "repo-"+t.Name())
	os.MkdirAll(filepath.Join(repo, "dir with space"), 0o755)
	write := func(name, data string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(repo, name), []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	git(t, "", "init", "-q", "-b", "main", repo)
	write("Makefile", "test:\n\t@test ! -e .env && test -f 'dir with space/naïve file.txt' && git log --oneline | grep -q second && ./tool.sh && echo repo tests passed in $$(pwd)\n", 0o644)
	write("tool.sh", "#!/bin/sh\nexit 0\n", 0o755)
	write("blob.bin", "\x00\x01\x02\xff binary \x00", 0o644)
	write("old-name.txt", "renamed later\n", 0o644)
	write("doomed.txt", "deleted later\n", 0o644)
	write("dir with space/naïve file.txt", "unicode\n", 0o644)
	write(".gitignore", ".env\n", 0o644)
	git(t, repo, "add", "-A")
	git(t, repo, "commit", "-qm", "first")
	git(t, repo, "mv", "old-name.txt", "renamed.txt")
	git(t, repo, "rm", "-q", "doomed.txt")
	git(t, repo, "commit", "-qm", "second")
	write(".env", "SECRET=1\n", 0o600)
	write("untracked.txt", "not yet added\n", 0o644)
	return repo
}

func git(t *testing.T, dir string, args ...string) {
	t.Helper()
	c := exec.Command("git", args...)
	c.Dir = dir
	c.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t",
		"GIT_COMMITTER_EMAIL=t@example.com", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null")
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

func gitOut(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).Output()
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}

func sha256sum(t *testing.T, path string) string {
	out, err := exec.Command("sha256sum", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))[0]
}

// compareTrees reports differences in names, contents, symlink targets and
// executable bits between two trees (ignoring .git).
func compareTrees(t *testing.T, a, b string) string {
	list := func(root string) map[string]string {
		m := map[string]string{}
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if rel == ".git" {
				return filepath.SkipDir
			}
			if d.IsDir() {
				return nil
			}
			info, _ := os.Lstat(p)
			switch {
			case info.Mode()&os.ModeSymlink != 0:
				target, _ := os.Readlink(p)
				m[rel] = "link:" + target
			default:
				data, _ := os.ReadFile(p)
				m[rel] = string(data) + "|x=" + boolStr(info.Mode()&0o111 != 0)
			}
			return nil
		})
		return m
	}
	ma, mb := list(a), list(b)
	var diff bytes.Buffer
	for k, v := range ma {
		if w, ok := mb[k]; !ok {
			diff.WriteString("only in the guest: " + k + "\n")
		} else if v != w {
			diff.WriteString("differs: " + k + "\n")
		}
	}
	for k := range mb {
		if _, ok := ma[k]; !ok {
			diff.WriteString("only in base+patch: " + k + "\n")
		}
	}
	return diff.String()
}

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
