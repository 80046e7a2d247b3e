package workspace

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// hostRepo builds the repository of the round-trip test: two commits
// (the second a rename), then uncommitted changes of every kind.
func hostRepo(t *testing.T) string {
	t.Helper()
	host := filepath.Join(t.TempDir(), "host repo")
	if err := os.MkdirAll(host, 0o755); err != nil {
		t.Fatal(err)
	}
	git(t, host, "init", "-q")
	writeFile(t, filepath.Join(host, "README.md"), "hello\n", 0o644)
	writeFile(t, filepath.Join(host, "bin.dat"), binaryData(1, 3000), 0o644)
	writeFile(t, filepath.Join(host, "old name.txt"), "a file that will be renamed\nline 2\nline 3\nline 4\n", 0o644)
	writeFile(t, filepath.Join(host, "gone.txt"), "deleted in the work tree\n", 0o644)
	writeFile(t, filepath.Join(host, "script.sh"), "#!/bin/sh\necho hi\n", 0o644)
	writeFile(t, filepath.Join(host, "dir with space", "naïve file.txt"), "naïve\n", 0o644)
	writeFile(t, filepath.Join(host, "lib", "a.go"), "package lib\n\n// A is a.\nfunc A() int { return 1 }\n\n// B is b.\nfunc B() int { return 2 }\n", 0o644)
	writeFile(t, filepath.Join(host, ".gitignore"), "/.env\n*.log\n", 0o644)
	symlink(t, "README.md", filepath.Join(host, "link"))
	git(t, host, "add", "-A")
	git(t, host, "commit", "-q", "-m", "initial")
	git(t, host, "mv", "old name.txt", "new name.txt")
	git(t, host, "commit", "-q", "-m", "rename")

	// Uncommitted: a deletion, a mode change, an edit, a staged new file,
	// an untracked file and ignored ones.
	os.Remove(filepath.Join(host, "gone.txt"))
	os.Chmod(filepath.Join(host, "script.sh"), 0o755)
	writeFile(t, filepath.Join(host, "README.md"), "hello\nedited on the host\n", 0o644)
	writeFile(t, filepath.Join(host, "staged.txt"), "staged but not committed\n", 0o644)
	git(t, host, "add", "staged.txt")
	writeFile(t, filepath.Join(host, "notes", "untracked.txt"), "untracked\n", 0o644)
	writeFile(t, filepath.Join(host, ".env"), "SECRET=1\n", 0o600)
	writeFile(t, filepath.Join(host, "debug.log"), "log\n", 0o644)
	// Ignore rules that live outside the work tree: the repository's
	// info/exclude and the user's global excludes file.
	writeFile(t, filepath.Join(host, ".git", "info", "exclude"), "# local\n*.tmp\n", 0o644)
	writeFile(t, filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "git", "ignore"), "*.swp\n", 0o644)
	writeFile(t, filepath.Join(host, "host.tmp"), "ignored locally\n", 0o644)
	writeFile(t, filepath.Join(host, ".host.swp"), "ignored globally\n", 0o644)
	return host
}

func TestRoundTrip(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	host := hostRepo(t)
	head := git(t, host, "rev-parse", "HEAD")

	info, err := Inspect(ctx, filepath.Join(host, "lib"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode != ModeGit || info.Root != host || info.Subdir != "lib" || info.Head != head || info.Branch != "main" ||
		!info.Dirty || !info.Untracked || info.ObjectFormat != "sha1" || info.Identity != (Identity{"Test User", "test@example.com"}) {
		t.Fatalf("Inspect = %+v", info)
	}
	if info.RequireGit() != nil {
		t.Fatal("RequireGit failed for a git work tree")
	}

	m, err := Plan(ctx, info, Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantPaths := []string{".gitignore", "README.md", "bin.dat", "dir with space/naïve file.txt", "lib/a.go", "link", "new name.txt", "script.sh", "staged.txt"}
	var got []string
	for _, e := range m.Entries {
		got = append(got, e.Path)
	}
	if !reflect.DeepEqual(got, wantPaths) || !reflect.DeepEqual(m.Deleted, []string{"gone.txt"}) || m.Files != len(wantPaths) || m.Untracked != 0 {
		t.Fatalf("Plan entries %q deleted %q files %d", got, m.Deleted, m.Files)
	}
	var dry bytes.Buffer
	if err := m.DryRun(&dry); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"dir with space/naïve file.txt", "link -> README.md", "deleted  gone.txt", "9 files (0 untracked)"} {
		if !strings.Contains(dry.String(), s) {
			t.Errorf("DryRun output lacks %q:\n%s", s, dry.String())
		}
	}

	guestRoot := t.TempDir()
	dest := filepath.Join(guestRoot, "root", "repo")
	var mu sync.Mutex
	var last, history Progress
	res, err := Prepare(ctx, Local{}, info, m, Options{Dest: dest, Progress: func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		switch p.Phase {
		case "files":
			last = p
		case "history":
			history = p
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if last.Bytes != m.TotalSize || last.Files != m.Files || res.Bytes != m.TotalSize || res.Files != m.Files {
		t.Errorf("progress %+v, result %d files %d bytes; plan %d files %d bytes", last, res.Files, res.Bytes, m.Files, m.TotalSize)
	}
	if history.Bytes == 0 {
		t.Error("no history progress")
	}
	mu.Unlock()
	if res.BaseCommit != head || res.Branch != "main" || !res.History || res.Snapshot == "" || res.Snapshot == head {
		t.Fatalf("Prepare = %+v", res)
	}

	// The guest has exactly the planned files, as they are on the host.
	hostTree := tree(t, host)
	want := map[string]node{}
	for _, p := range wantPaths {
		want[p] = hostTree[p]
	}
	sameTree(t, "guest after Prepare", tree(t, dest), want)
	if _, err := os.Lstat(filepath.Join(dest, ".env")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal(".env reached the guest")
	}

	// History: HEAD is the base, on the host's branch, shallow (depth 1).
	if got := git(t, dest, "rev-parse", "HEAD"); got != head {
		t.Fatalf("guest HEAD %s, want %s", got, head)
	}
	if got := git(t, dest, "symbolic-ref", "--short", "HEAD"); got != "main" {
		t.Fatalf("guest branch %q", got)
	}
	if got := git(t, dest, "log", "--format=%s"); got != "rename" {
		t.Fatalf("guest log %q", got)
	}
	if got := git(t, dest, "rev-parse", "--is-shallow-repository"); got != "true" {
		t.Fatalf("guest shallow = %s", got)
	}
	git(t, dest, "fsck", "--no-progress")
	if got := git(t, dest, "config", "--local", "user.name"); got != "Test User" {
		t.Fatalf("guest user.name %q", got)
	}
	status := run(t, dest, "git", "-c", "core.quotepath=off", "status", "--porcelain")
	for _, s := range []string{" D gone.txt", " M README.md", " M script.sh", "?? staged.txt"} {
		if !strings.Contains(status, s) {
			t.Errorf("guest status lacks %q:\n%s", s, status)
		}
	}
	if strings.Contains(status, "new name.txt") || strings.Contains(status, "naïve") || strings.Contains(status, "link") || strings.Contains(status, "bin.dat") {
		t.Errorf("guest status shows unchanged files:\n%s", status)
	}

	// Work in the guest: a commit, then uncommitted changes.
	writeFile(t, filepath.Join(dest, "README.md"), "hello from the guest\n", 0o644)
	writeFile(t, filepath.Join(dest, "img.bin"), binaryData(2, 5000), 0o644)
	git(t, dest, "mv", "lib/a.go", "lib/b.go")
	os.Remove(filepath.Join(dest, "bin.dat"))
	os.Chmod(filepath.Join(dest, "dir with space", "naïve file.txt"), 0o755)
	writeFile(t, filepath.Join(dest, "übersetzung", "ñandú file.txt"), "ñandú\n", 0o644)
	git(t, dest, "add", "-A")
	git(t, dest, "commit", "-q", "-m", "guest work")
	writeFile(t, filepath.Join(dest, "new name.txt"), "a file that will be renamed\nline 2\nline 3\nline 4\nedited in the guest\n", 0o644)
	writeFile(t, filepath.Join(dest, "later file.txt"), "untracked in the guest\n", 0o644)
	writeFile(t, filepath.Join(dest, `weird "quoted"	name.txt`), "tab and quotes\n", 0o644)
	writeFile(t, filepath.Join(dest, "empty.txt"), "", 0o644)
	symlink(t, "lib/b.go", filepath.Join(dest, "link"))
	os.Chmod(filepath.Join(dest, "lib", "b.go"), 0o755)
	writeFile(t, filepath.Join(dest, ".env"), "GUEST SECRET\n", 0o600)
	writeFile(t, filepath.Join(dest, "build.log"), "ignored\n", 0o644)
	writeFile(t, filepath.Join(dest, "scratch.tmp"), "ignored by the host's info/exclude\n", 0o644)
	writeFile(t, filepath.Join(dest, "x.swp"), "ignored by the host's global excludes\n", 0o644)

	indexBefore, err := os.ReadFile(filepath.Join(dest, ".git", "index"))
	if err != nil {
		t.Fatal(err)
	}
	statusBefore := git(t, dest, "status", "--porcelain")
	objectsBefore := objectFiles(t, filepath.Join(dest, ".git"))

	patch, err := Export(ctx, Local{}, dest, res.BaseCommit)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("BANGER_SHOW_PATCH") != "" {
		t.Logf("patch:\n%s", patch)
	}
	indexAfter, _ := os.ReadFile(filepath.Join(dest, ".git", "index"))
	if !bytes.Equal(indexBefore, indexAfter) {
		t.Fatal("Export changed the guest's index")
	}
	if got := git(t, dest, "status", "--porcelain"); got != statusBefore {
		t.Fatalf("Export changed the guest's status:\n%s\nwas:\n%s", got, statusBefore)
	}
	if got := objectFiles(t, filepath.Join(dest, ".git")); !reflect.DeepEqual(got, objectsBefore) {
		t.Fatal("Export wrote to the guest's object store")
	}
	for _, s := range []string{"GIT binary patch", "rename from lib/a.go", "rename to lib/b.go", "new mode 100755", "deleted file mode 100644", "übersetzung/ñandú file.txt"} {
		if !bytes.Contains(patch, []byte(s)) {
			t.Errorf("patch lacks %q", s)
		}
	}
	if bytes.Contains(patch, []byte("SECRET")) || bytes.Contains(patch, []byte("build.log")) ||
		bytes.Contains(patch, []byte("scratch.tmp")) || bytes.Contains(patch, []byte("x.swp")) {
		t.Fatal("patch contains ignored files")
	}

	// Apply on a fresh clone of the host at the base: same tree as the guest.
	clone := filepath.Join(t.TempDir(), "clone")
	git(t, filepath.Dir(clone), "clone", "-q", "--no-checkout", host, clone)
	git(t, clone, "checkout", "-q", "--detach", res.BaseCommit)
	applyPatch(t, clone, patch)
	guestTree := tree(t, dest, ".env", "build.log", "scratch.tmp", "x.swp")
	sameTree(t, "clone + Export patch vs guest", tree(t, clone), guestTree)

	// The guest's commits as an mbox: git am reproduces its HEAD tree.
	mbox, err := ExportCommits(ctx, Local{}, dest, res.BaseCommit)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(mbox, []byte("From ")) || !bytes.Contains(mbox, []byte("Subject: [PATCH] guest work")) {
		t.Fatalf("mbox:\n%s", mbox)
	}
	am := filepath.Join(t.TempDir(), "am")
	git(t, filepath.Dir(am), "clone", "-q", "--no-checkout", host, am)
	git(t, am, "checkout", "-q", "--detach", res.BaseCommit)
	mf := filepath.Join(t.TempDir(), "commits.mbox")
	os.WriteFile(mf, mbox, 0o644)
	git(t, am, "am", "-q", mf)
	if a, b := git(t, am, "rev-parse", "HEAD^{tree}"), git(t, dest, "rev-parse", "HEAD^{tree}"); a != b {
		t.Fatalf("git am tree %s, guest HEAD tree %s", a, b)
	}

	// Since the snapshot: only the guest's work, applying to the host's
	// work tree as it was copied (uncommitted changes and all).
	sincePatch, err := Export(ctx, Local{}, dest, res.Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sincePatch, []byte("gone.txt")) {
		t.Fatal("snapshot patch repeats the host's own uncommitted deletion")
	}
	hostCopy := filepath.Join(t.TempDir(), "host copy")
	run(t, "/", "cp", "-a", host, hostCopy)
	applyPatch(t, hostCopy, sincePatch)
	sameTree(t, "host work tree + snapshot patch vs guest", tree(t, hostCopy, ".env", "debug.log", "notes", "host.tmp", ".host.swp"), guestTree)

	// Relative to the guest's own HEAD: only its uncommitted edits.
	uncommitted, err := Export(ctx, Local{}, dest, git(t, dest, "rev-parse", "HEAD"))
	if err != nil || !bytes.Contains(uncommitted, []byte("later file.txt")) || bytes.Contains(uncommitted, []byte("img.bin")) {
		t.Fatalf("export vs guest HEAD: %v\n%s", err, uncommitted)
	}

	// IncludeUntracked: the untracked file goes too, ignored ones never.
	m2, err := Plan(ctx, info, Options{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	if m2.Untracked != 1 || m2.Files != len(wantPaths)+1 {
		t.Fatalf("Plan with untracked: %d files, %d untracked", m2.Files, m2.Untracked)
	}
	dest2 := filepath.Join(guestRoot, "root", "repo2")
	if _, err := Prepare(ctx, Local{}, info, m2, Options{Dest: dest2}); err != nil {
		t.Fatal(err)
	}
	want["notes/untracked.txt"] = hostTree["notes/untracked.txt"]
	sameTree(t, "guest with untracked", tree(t, dest2), want)
	if st := git(t, dest2, "status", "--porcelain"); !strings.Contains(st, "?? notes/") {
		t.Fatalf("untracked file not untracked in the guest:\n%s", st)
	}
}

func TestPlainDirectory(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	dir := filepath.Join(t.TempDir(), "plain dir")
	writeFile(t, filepath.Join(dir, "main.c"), "int main(void) { return 0; }\n", 0o644)
	writeFile(t, filepath.Join(dir, "run.sh"), "#!/bin/sh\n", 0o755)
	writeFile(t, filepath.Join(dir, "data", "blob.bin"), binaryData(3, 2048), 0o644)
	writeFile(t, filepath.Join(dir, ".env"), "PLAIN=1\n", 0o600)
	os.MkdirAll(filepath.Join(dir, "empty dir"), 0o755)
	symlink(t, "main.c", filepath.Join(dir, "link.c"))

	info, err := Inspect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode != ModePlain || info.Root != dir || info.Head != "" || len(info.Warnings) == 0 || !strings.Contains(info.Warnings[0], "not a git work tree") ||
		info.Identity.Name != "Test User" {
		t.Fatalf("Inspect = %+v", info)
	}
	if err := info.RequireGit(); !errors.Is(err, ErrNotGitWorkTree) || !strings.Contains(err.Error(), "git init") {
		t.Fatalf("RequireGit = %v", err)
	}
	m, err := Plan(ctx, info, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Files != 5 {
		t.Fatalf("plain plan has %d files: %+v", m.Files, m.Entries)
	}
	dest := filepath.Join(t.TempDir(), "root", "work")
	res, err := Prepare(ctx, Local{}, info, m, Options{Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, "plain copy", tree(t, dest), tree(t, dir))
	if fi, err := os.Stat(filepath.Join(dest, "empty dir")); err != nil || !fi.IsDir() {
		t.Fatal("empty directory not copied")
	}
	if res.BaseCommit == "" || res.Snapshot != res.BaseCommit {
		t.Fatalf("Prepare = %+v", res)
	}
	if st := git(t, dest, "status", "--porcelain"); st != "" {
		t.Fatalf("guest status not clean:\n%s", st)
	}
	if got := git(t, dest, "config", "--local", "user.email"); got != "test@example.com" {
		t.Fatalf("guest user.email %q", got)
	}

	writeFile(t, filepath.Join(dest, "main.c"), "int main(void) { return 1; }\n", 0o644)
	writeFile(t, filepath.Join(dest, "new.txt"), "new\n", 0o644)
	os.Remove(filepath.Join(dest, "run.sh"))
	patch, err := Export(ctx, Local{}, dest, res.BaseCommit)
	if err != nil {
		t.Fatal(err)
	}
	// git apply outside any repository patches plain files.
	target := filepath.Join(t.TempDir(), "target")
	run(t, "/", "cp", "-a", dir, target)
	applyPatch(t, target, patch, "GIT_CEILING_DIRECTORIES="+filepath.Dir(target))
	sameTree(t, "plain dir + patch vs guest", tree(t, target), tree(t, dest))
}

func TestEmptyRepository(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	host := t.TempDir()
	git(t, host, "init", "-q")
	writeFile(t, filepath.Join(host, "a.txt"), "a\n", 0o644)
	writeFile(t, filepath.Join(host, "b", "c.txt"), "c\n", 0o644)

	info, err := Inspect(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode != ModeGit || info.Head != "" || info.Branch != "main" || !info.Untracked || info.Dirty {
		t.Fatalf("Inspect = %+v", info)
	}
	if !strings.Contains(strings.Join(info.Warnings, "\n"), "no commit yet") {
		t.Fatalf("no warning about the empty repository: %q", info.Warnings)
	}
	m, err := Plan(ctx, info, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Files != 0 || len(m.Warnings) == 0 {
		t.Fatalf("plan without untracked: %d files, warnings %q", m.Files, m.Warnings)
	}
	git(t, host, "add", "a.txt") // staged: tracked, goes without IncludeUntracked
	if m, _ = Plan(ctx, info, Options{}); m.Files != 1 {
		t.Fatalf("plan with a staged file: %+v", m.Entries)
	}
	if m, err = Plan(ctx, info, Options{IncludeUntracked: true}); err != nil || m.Files != 2 {
		t.Fatalf("plan with untracked: %v %+v", err, m.Entries)
	}
	if _, err := Prepare(ctx, Local{}, info, m, Options{Dest: t.TempDir() + "/x", Branch: "b", From: "HEAD"}); err == nil {
		t.Fatal("From in an empty repository accepted")
	}
	dest := filepath.Join(t.TempDir(), "root", "repo")
	res, err := Prepare(ctx, Local{}, info, m, Options{Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	if res.BaseCommit != "" || res.Snapshot == "" || res.Branch != "main" {
		t.Fatalf("Prepare = %+v", res)
	}
	if got := git(t, dest, "symbolic-ref", "HEAD"); got != "refs/heads/main" {
		t.Fatalf("guest HEAD -> %s", got)
	}
	sameTree(t, "empty repo copy", tree(t, dest), tree(t, host))

	writeFile(t, filepath.Join(dest, "a.txt"), "a from guest\n", 0o644)
	writeFile(t, filepath.Join(dest, "d.txt"), "d\n", 0o755)
	patch, err := Export(ctx, Local{}, dest, "")
	if err != nil {
		t.Fatal(err)
	}
	fresh := t.TempDir()
	git(t, fresh, "init", "-q")
	applyPatch(t, fresh, patch)
	sameTree(t, "empty tree + patch vs guest", tree(t, fresh), tree(t, dest))

	since, err := Export(ctx, Local{}, dest, res.Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	hostCopy := filepath.Join(t.TempDir(), "copy")
	run(t, "/", "cp", "-a", host, hostCopy)
	applyPatch(t, hostCopy, since)
	sameTree(t, "host copy + snapshot patch vs guest", tree(t, hostCopy), tree(t, dest))
	if mbox, err := ExportCommits(ctx, Local{}, dest, ""); err != nil || len(mbox) != 0 {
		t.Fatalf("ExportCommits with no commits: %v, %d bytes", err, len(mbox))
	}
}

func TestBranchFromAndDepth(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	host := t.TempDir()
	git(t, host, "init", "-q")
	var commits []string
	for i := 1; i <= 5; i++ {
		writeFile(t, filepath.Join(host, "f.txt"), strings.Repeat("line\n", i), 0o644)
		git(t, host, "add", "-A")
		git(t, host, "commit", "-q", "-m", "c"+string(rune('0'+i)))
		commits = append(commits, git(t, host, "rev-parse", "HEAD"))
	}
	info, err := Inspect(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Plan(ctx, info, Options{})
	if err != nil {
		t.Fatal(err)
	}

	dest := filepath.Join(t.TempDir(), "root", "repo")
	res, err := Prepare(ctx, Local{}, info, m, Options{Dest: dest, Branch: "feature", From: "HEAD~2", Depth: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.BaseCommit != commits[2] || res.Branch != "feature" || res.Depth != 2 {
		t.Fatalf("Prepare = %+v", res)
	}
	if got := git(t, dest, "symbolic-ref", "--short", "HEAD"); got != "feature" {
		t.Fatalf("guest branch %s", got)
	}
	if got := git(t, dest, "rev-parse", "HEAD", "main"); got != commits[2]+"\n"+commits[4] {
		t.Fatalf("guest HEAD, main = %s", got)
	}
	if got := git(t, dest, "rev-list", "--count", "main"); got != "2" {
		t.Fatalf("main has %s commits in the guest, want 2", got)
	}
	// Files untouched: the host's work tree (c5), so f.txt shows modified.
	sameTree(t, "branch copy", tree(t, dest), tree(t, host))
	if st := git(t, dest, "status", "--porcelain"); st != "M f.txt" {
		t.Fatalf("guest status %q", st)
	}
	git(t, dest, "fsck", "--no-progress")

	// Whole history, detached HEAD.
	git(t, host, "checkout", "-q", "--detach", "HEAD~1")
	info, _ = Inspect(ctx, host)
	m, _ = Plan(ctx, info, Options{})
	dest2 := filepath.Join(t.TempDir(), "root", "repo")
	res, err = Prepare(ctx, Local{}, info, m, Options{Dest: dest2, Depth: -1})
	if err != nil {
		t.Fatal(err)
	}
	if res.BaseCommit != commits[3] || res.Branch != "" || res.Snapshot != res.BaseCommit {
		t.Fatalf("Prepare = %+v", res)
	}
	if got := git(t, dest2, "rev-list", "--count", "HEAD"); got != "4" {
		t.Fatalf("full history has %s commits", got)
	}
	if got := git(t, dest2, "rev-parse", "--is-shallow-repository"); got != "false" {
		t.Fatal("full history is shallow")
	}
	if patch, err := Export(ctx, Local{}, dest2, res.BaseCommit); err != nil || len(patch) != 0 {
		t.Fatalf("export without changes: %v\n%s", err, patch)
	}

	for _, bad := range []Options{
		{Dest: dest2 + "x", From: "HEAD"},                          // From without Branch
		{Dest: dest2 + "y", Branch: "feature", From: "nope"},       // unknown rev
		{Dest: dest2 + "z", Branch: "bad..name"},                   // invalid name
		{Dest: dest2 + "w", Branch: "feature", From: "--output=x"}, // option-like
	} {
		if _, err := Prepare(ctx, Local{}, info, m, bad); err == nil {
			t.Errorf("Prepare(%+v) accepted", bad)
		}
	}
}

func TestSubmoduleAndLFS(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	host := t.TempDir()
	git(t, host, "init", "-q")
	writeFile(t, filepath.Join(host, ".gitattributes"), "*.bin filter=lfs diff=lfs merge=lfs -text\n", 0o644)
	writeFile(t, filepath.Join(host, "assets", ".gitattributes"), "big/** filter=lfs\n*.txt text\n", 0o644)
	writeFile(t, filepath.Join(host, ".gitmodules"), "[submodule \"vendored\"]\n\tpath = third/party\n\turl = https://example.com/party.git\n", 0o644)
	writeFile(t, filepath.Join(host, "x.bin"), "pointer-ish\n", 0o644)
	git(t, host, "add", "-A")
	git(t, host, "update-index", "--add", "--cacheinfo", "160000,1111111111111111111111111111111111111111,third/party")
	git(t, host, "commit", "-q", "-m", "init")

	info, err := Inspect(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Submodules) != 1 || info.Submodules[0] != (Submodule{Path: "third/party", URL: "https://example.com/party.git", Commit: strings.Repeat("1", 40)}) {
		t.Fatalf("Submodules = %+v", info.Submodules)
	}
	if !reflect.DeepEqual(info.LFS, []string{"*.bin", "assets/big/**"}) {
		t.Fatalf("LFS = %q", info.LFS)
	}
	warn := strings.Join(info.Warnings, "\n")
	if !strings.Contains(warn, "submodule third/party (https://example.com/party.git) is not copied") || !strings.Contains(warn, "Git LFS") {
		t.Fatalf("warnings: %s", warn)
	}
	nested := filepath.Join(host, "nested")
	os.MkdirAll(nested, 0o755)
	git(t, nested, "init", "-q")
	writeFile(t, filepath.Join(nested, "n.txt"), "n\n", 0o644)
	m, err := Plan(ctx, info, Options{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(m.Entries, func(e Entry) bool { return e.Path == "third/party" && e.Kind == KindDir }) ||
		!reflect.DeepEqual(m.Skipped, []Skip{{"third/party", "submodule: not copied, the guest gets an empty directory"}, {"nested", "nested git repository: not copied"}}) {
		t.Fatalf("plan: %+v skipped %+v", m.Entries, m.Skipped)
	}
	dest := filepath.Join(t.TempDir(), "root", "repo")
	res, err := Prepare(ctx, Local{}, info, m, Options{Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dest, "third", "party")); err != nil || !fi.IsDir() {
		t.Fatal("no directory for the submodule")
	}
	if res.Snapshot != res.BaseCommit {
		t.Fatalf("an unpopulated submodule counted as a change: %+v", res)
	}
	if patch, err := Export(ctx, Local{}, dest, res.BaseCommit); err != nil || len(patch) != 0 {
		t.Fatalf("export: %v\n%s", err, patch)
	}
}

func TestPrepareDestination(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	host := t.TempDir()
	git(t, host, "init", "-q")
	writeFile(t, filepath.Join(host, "a"), "a\n", 0o644)
	git(t, host, "add", "-A")
	git(t, host, "commit", "-q", "-m", "a")
	info, _ := Inspect(ctx, host)
	m, _ := Plan(ctx, info, Options{})

	dest := filepath.Join(t.TempDir(), "root", "repo")
	writeFile(t, filepath.Join(dest, "stale"), "old\n", 0o644)
	if _, err := Prepare(ctx, Local{}, info, m, Options{Dest: dest}); !errors.Is(err, ErrDestNotEmpty) {
		t.Fatalf("non-empty dest: %v", err)
	}
	if _, err := Prepare(ctx, Local{}, info, m, Options{Dest: dest, Replace: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dest, "stale")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Replace kept a stale file")
	}
	for _, d := range []string{"relative/path", "/"} {
		if _, err := Prepare(ctx, Local{}, info, m, Options{Dest: d}); err == nil {
			t.Errorf("dest %q accepted", d)
		}
	}
	if _, err := Prepare(ctx, Local{}, info, m, Options{Dest: "/root", Replace: true}); err == nil {
		t.Error("Replace of /root accepted")
	}
	other, _ := Inspect(ctx, t.TempDir())
	if _, err := Prepare(ctx, Local{}, other, m, Options{Dest: dest + "2"}); err == nil {
		t.Error("a plan for another root accepted")
	}
	if _, err := Export(ctx, Local{}, dest, "not-a-hash"); err == nil {
		t.Error("Export accepted a bad base")
	}
	if _, err := Export(ctx, Local{}, t.TempDir(), ""); !errors.Is(err, ErrNoRepository) {
		t.Errorf("Export without a repository: %v", err)
	}
	if _, err := Export(ctx, Local{}, dest, strings.Repeat("ab", 20)); err == nil || !strings.Contains(err.Error(), "not in the guest repository") {
		t.Errorf("Export with an unknown base: %v", err)
	}
}

func TestInspectErrors(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	host := t.TempDir()
	git(t, host, "init", "-q")
	writeFile(t, filepath.Join(host, "file"), "x\n", 0o644)
	for _, c := range []struct{ path, want string }{
		{filepath.Join(host, "missing"), "no such directory"},
		{filepath.Join(host, "file"), "not a directory"},
		{filepath.Join(host, ".git"), "inside a .git directory"},
	} {
		if _, err := Inspect(ctx, c.path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Inspect(%s) = %v, want %q", c.path, err, c.want)
		}
	}
}

func TestTrackedPathBehindSymlinkIsNotFollowed(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	host := t.TempDir()
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "secret"), "host secret\n", 0o600)
	git(t, host, "init", "-q")
	writeFile(t, filepath.Join(host, "d", "secret"), "tracked\n", 0o644)
	git(t, host, "add", "-A")
	git(t, host, "commit", "-q", "-m", "d")
	os.RemoveAll(filepath.Join(host, "d"))
	symlink(t, outside, filepath.Join(host, "d"))
	info, _ := Inspect(ctx, host)
	m, err := Plan(ctx, info, Options{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Entries {
		if e.Path == "d/secret" {
			t.Fatal("followed a symlinked directory out of the work tree")
		}
	}
	if !slices.Contains(m.Deleted, "d/secret") {
		t.Fatalf("deleted = %q", m.Deleted)
	}
}

func TestLocalExitCodes(t *testing.T) {
	ctx := testCtx(t)
	var errb bytes.Buffer
	if code, err := (Local{}).Run(ctx, []string{"sh", "-c", "exit 7"}, nil, nil, nil); code != 7 || err != nil {
		t.Errorf("exit 7: %d %v", code, err)
	}
	if code, err := (Local{}).Run(ctx, []string{"no-such-command-banger"}, nil, nil, &errb); code != 127 || err != nil || !strings.Contains(errb.String(), "not found") {
		t.Errorf("missing command: %d %v %q", code, err, errb.String())
	}
	if code, err := (Local{}).Run(ctx, []string{"sh", "-c", "kill -TERM $$"}, nil, nil, nil); code != 128+15 || err != nil {
		t.Errorf("signal: %d %v", code, err)
	}
	var out bytes.Buffer
	if code, err := (Local{Env: []string{"BANGER_X=a b"}}).Run(ctx, []string{"sh", "-c", `printf '%s|%s' "$BANGER_X" "$1"`, "sh", "x  y"}, nil, &out, nil); code != 0 || err != nil || out.String() != "a b|x  y" {
		t.Errorf("argv/env: %d %v %q", code, err, out.String())
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// A SHA-256 repository, copied from a linked worktree.
func TestSHA256Worktree(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	main := filepath.Join(t.TempDir(), "main")
	os.MkdirAll(main, 0o755)
	git(t, main, "init", "-q", "--object-format=sha256")
	writeFile(t, filepath.Join(main, "a.txt"), "a\n", 0o644)
	git(t, main, "add", "-A")
	git(t, main, "commit", "-q", "-m", "a")
	wt := filepath.Join(t.TempDir(), "wt")
	git(t, main, "worktree", "add", "-q", "-b", "topic", wt)
	writeFile(t, filepath.Join(wt, "a.txt"), "a in the worktree\n", 0o644)

	info, err := Inspect(ctx, wt)
	if err != nil {
		t.Fatal(err)
	}
	if info.ObjectFormat != "sha256" || len(info.Head) != 64 || info.Branch != "topic" || info.Root != wt {
		t.Fatalf("Inspect = %+v", info)
	}
	m, _ := Plan(ctx, info, Options{})
	dest := filepath.Join(t.TempDir(), "root", "repo")
	res, err := Prepare(ctx, Local{}, info, m, Options{Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	if res.BaseCommit != info.Head || git(t, dest, "rev-parse", "--show-object-format") != "sha256" {
		t.Fatalf("Prepare = %+v", res)
	}
	writeFile(t, filepath.Join(dest, "b.txt"), "b\n", 0o644)
	patch, err := Export(ctx, Local{}, dest, res.BaseCommit)
	if err != nil {
		t.Fatal(err)
	}
	clone := filepath.Join(t.TempDir(), "clone")
	git(t, filepath.Dir(clone), "clone", "-q", main, clone)
	git(t, clone, "checkout", "-q", "--detach", res.BaseCommit)
	applyPatch(t, clone, patch)
	sameTree(t, "sha256 clone + patch vs guest", tree(t, clone), tree(t, dest))
}

// pathWith returns a PATH holding only the named host commands.
func pathWith(t *testing.T, cmds ...string) string {
	t.Helper()
	bin := t.TempDir()
	for _, c := range cmds {
		p, err := exec.LookPath(c)
		if err != nil {
			t.Skipf("%s not installed", c)
		}
		if err := os.Symlink(p, filepath.Join(bin, c)); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

func TestGuestWithoutGitOrTar(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	host := t.TempDir()
	git(t, host, "init", "-q")
	writeFile(t, filepath.Join(host, "a.txt"), "a\n", 0o644)
	git(t, host, "add", "-A")
	git(t, host, "commit", "-q", "-m", "a")
	info, _ := Inspect(ctx, host)
	m, _ := Plan(ctx, info, Options{})

	noGit := Local{Env: []string{"PATH=" + pathWith(t, "sh", "mkdir", "ls", "head", "rm", "tar")}}
	dest := filepath.Join(t.TempDir(), "root", "repo")
	res, err := Prepare(ctx, noGit, info, m, Options{Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	if res.History || res.BaseCommit != "" || len(res.Warnings) == 0 || !strings.Contains(res.Warnings[0], "git is not installed in the guest") {
		t.Fatalf("Prepare = %+v", res)
	}
	sameTree(t, "files without git", tree(t, dest), tree(t, host))
	if _, err := Export(ctx, Local{}, dest, ""); !errors.Is(err, ErrNoRepository) {
		t.Fatalf("Export without a repository: %v", err)
	}

	noTar := Local{Env: []string{"PATH=" + pathWith(t, "sh", "mkdir", "ls", "head", "rm")}}
	_, err = Prepare(ctx, noTar, info, m, Options{Dest: filepath.Join(t.TempDir(), "x")})
	var ce *CommandError
	if !errors.As(err, &ce) || ce.ExitCode != 127 || !strings.Contains(ce.Step, "extract files") {
		t.Fatalf("Prepare without tar: %v", err)
	}

	// A directory inside some other repository is not a workspace.
	sub := filepath.Join(host, "sub")
	os.MkdirAll(sub, 0o755)
	if _, err := Export(ctx, Local{}, sub, ""); !errors.Is(err, ErrNoRepository) {
		t.Fatalf("Export below another repository's top: %v", err)
	}
}
