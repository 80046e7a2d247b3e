package workspace

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Mode says how a host directory is copied.
type Mode string

const (
	// ModeGit: tracked (and optionally untracked, non-ignored) files of a
	// git work tree plus shallow history.
	ModeGit Mode = "git"
	// ModePlain: a directory outside any git work tree, copied whole. The
	// guest gets a fresh repository with one snapshot commit so that Export
	// still works; its history is not the host's.
	ModePlain Mode = "plain"
)

// ErrNotGitWorkTree is wrapped by Info.RequireGit for plain directories.
var ErrNotGitWorkTree = errors.New("not a git work tree")

// Submodule is a gitlink in the work tree's index.
type Submodule struct {
	Path        string // slash-separated, relative to the work tree top
	URL         string // from .gitmodules; "" when not listed there
	Commit      string // the commit recorded in the index
	Initialized bool   // checked out on the host (has its own .git)
}

// Identity is the git author identity configured on the host.
type Identity struct {
	Name, Email string
}

// Info describes a host directory to copy.
type Info struct {
	Mode Mode
	// Path is the directory asked for, absolute with symlinks resolved.
	Path string
	// Root is what gets copied: the work tree top (git) or Path (plain).
	Root string
	// Subdir is Path relative to Root, slash-separated ("" when equal): a
	// command run "in the repo" should start in Dest/Subdir.
	Subdir string
	// Head is the full hash of HEAD; "" in an empty repository (no commit
	// yet) and in plain mode.
	Head string
	// Branch is the checked-out branch's short name; "" when HEAD is
	// detached. In an empty repository it is the unborn branch's name.
	Branch string
	// ObjectFormat is "sha1" or "sha256".
	ObjectFormat string
	// Shallow: the host repository is itself a shallow clone.
	Shallow bool
	// Dirty: tracked files differ from HEAD (staged or not).
	Dirty bool
	// Untracked: there are untracked files git does not ignore.
	Untracked bool
	// Submodules are not copied (the guest gets empty directories); see
	// Warnings for what to do.
	Submodules []Submodule
	// LFS lists the .gitattributes patterns with filter=lfs.
	LFS []string
	// Identity is the host's user.name/user.email, copied to the guest repo.
	Identity Identity
	// Warnings explain, for a person, what will not be copied as-is.
	Warnings []string
}

// RequireGit returns an error for a directory that is not in a git work
// tree, for callers (export, say) that cannot work without one.
func (i Info) RequireGit() error {
	if i.Mode == ModeGit {
		return nil
	}
	return fmt.Errorf("%s is %w: run `git init && git add -A && git commit -m init` there to copy it with history, or copy it as a plain directory", i.Path, ErrNotGitWorkTree)
}

// Inspect resolves hostPath and describes what copying it means.
func Inspect(ctx context.Context, hostPath string) (Info, error) {
	if hostPath == "" {
		hostPath = "."
	}
	abs, err := filepath.Abs(hostPath)
	if err != nil {
		return Info{}, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Info{}, fmt.Errorf("workspace %s: no such directory", hostPath)
		}
		return Info{}, fmt.Errorf("workspace %s: %w", hostPath, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return Info{}, fmt.Errorf("workspace %s: %w", hostPath, err)
	}
	if !st.IsDir() {
		return Info{}, fmt.Errorf("workspace %s: not a directory (give the directory of a git work tree, or a plain directory)", hostPath)
	}
	info := Info{Path: real}

	out, err := hostGit(ctx, real, nil, "rev-parse", "--show-toplevel", "--is-shallow-repository", "--show-object-format")
	if err != nil {
		var ge *gitError
		switch {
		case errors.As(err, &ge) && strings.Contains(ge.stderr, "not a git repository"):
			// Outside a repository git still knows the user's identity.
			info.Identity.Name, _ = gitOptional(ctx, real, "config", "--get", "user.name")
			info.Identity.Email, _ = gitOptional(ctx, real, "config", "--get", "user.email")
			return inspectPlain(info), nil
		case errors.As(err, &ge) && strings.Contains(ge.stderr, "dubious ownership"):
			return Info{}, fmt.Errorf("workspace %s: git refuses a repository owned by another user; copy it as its owner (or add it to that user's safe.directory): %w", hostPath, err)
		case errors.As(err, &ge) && strings.Contains(ge.stderr, "must be run in a work tree"):
			return Info{}, fmt.Errorf("workspace %s: inside a .git directory or a bare repository; give the directory of a work tree", hostPath)
		case errors.Is(err, exec.ErrNotFound):
			if dot := findDotGit(real); dot != "" {
				return Info{}, fmt.Errorf("workspace %s: %s is a git repository but git is not installed on this host: %w", hostPath, filepath.Dir(dot), err)
			}
			return inspectPlain(info), nil
		}
		return Info{}, fmt.Errorf("workspace %s: %w", hostPath, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 3 {
		return Info{}, fmt.Errorf("workspace %s: unexpected git rev-parse output %q", hostPath, out)
	}
	info.Mode = ModeGit
	info.Root = lines[0]
	info.Shallow = lines[1] == "true"
	info.ObjectFormat = lines[2]
	if rel, err := filepath.Rel(info.Root, real); err == nil && rel != "." {
		info.Subdir = filepath.ToSlash(rel)
	}
	root := info.Root

	if info.Head, err = gitOptional(ctx, root, "rev-parse", "-q", "--verify", "HEAD^{commit}"); err != nil {
		return Info{}, err
	}
	if info.Branch, err = gitOptional(ctx, root, "symbolic-ref", "-q", "--short", "HEAD"); err != nil {
		return Info{}, err
	}
	if info.Identity.Name, err = gitOptional(ctx, root, "config", "--get", "user.name"); err != nil {
		return Info{}, err
	}
	if info.Identity.Email, err = gitOptional(ctx, root, "config", "--get", "user.email"); err != nil {
		return Info{}, err
	}
	if err := inspectStatus(ctx, &info); err != nil {
		return Info{}, err
	}
	if err := inspectSubmodulesAndLFS(ctx, &info); err != nil {
		return Info{}, err
	}

	if info.Head == "" {
		info.Warnings = append(info.Warnings, "the repository has no commit yet: the guest gets the files and an empty repository on the same branch; Export then diffs against the empty tree")
	}
	if info.Subdir != "" {
		info.Warnings = append(info.Warnings, fmt.Sprintf("%s is inside the git work tree %s: the whole work tree is copied (start commands in <dest>/%s)", real, root, info.Subdir))
		if _, err := hostGit(ctx, root, nil, "check-ignore", "-q", "--", info.Subdir); err == nil {
			info.Warnings = append(info.Warnings, fmt.Sprintf("%s is ignored by git in %s, so none of its files are copied", info.Subdir, root))
		}
	}
	if info.Identity.Name == "" || info.Identity.Email == "" {
		info.Warnings = append(info.Warnings, "no git user.name/user.email on the host: set them in the guest (git config user.name ...) before committing there")
	}
	return info, nil
}

func inspectPlain(info Info) Info {
	info.Mode = ModePlain
	info.Root = info.Path
	info.Warnings = append(info.Warnings, fmt.Sprintf("%s is not a git work tree: it is copied whole as plain files (no .gitignore applies, no history); "+
		"the guest gets a fresh repository with one snapshot commit so changes can still be exported. "+
		"To copy only tracked files with history, run `git init && git add -A && git commit` there first", info.Path))
	return info
}

// findDotGit returns the nearest .git at or above dir, or "".
func findDotGit(dir string) string {
	for {
		p := filepath.Join(dir, ".git")
		if _, err := os.Lstat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// inspectStatus sets Dirty and Untracked from git status.
func inspectStatus(ctx context.Context, info *Info) error {
	out, err := hostGit(ctx, info.Root, nil, "status", "--porcelain=v1", "-z", "--untracked-files=normal")
	if err != nil {
		return err
	}
	recs := splitZ(out)
	for i := 0; i < len(recs); i++ {
		r := recs[i]
		if len(r) < 3 {
			continue
		}
		xy := r[:2]
		if xy == "??" {
			info.Untracked = true
			continue
		}
		if xy != "!!" {
			info.Dirty = true
		}
		if strings.ContainsAny(xy, "RC") {
			i++ // a rename or copy is followed by its source path
		}
	}
	return nil
}

// inspectSubmodulesAndLFS reads gitlinks from the index, their URLs from
// .gitmodules, and filter=lfs patterns from every .gitattributes.
func inspectSubmodulesAndLFS(ctx context.Context, info *Info) error {
	root := info.Root
	out, err := hostGit(ctx, root, nil, "ls-files", "-z", "-s")
	if err != nil {
		return err
	}
	var attrFiles []string
	seen := map[string]bool{}
	for _, rec := range splitZ(out) {
		meta, p, ok := strings.Cut(rec, "\t")
		if !ok || seen[p] {
			continue
		}
		seen[p] = true
		f := strings.Fields(meta)
		if len(f) >= 2 && f[0] == "160000" {
			_, err := os.Lstat(filepath.Join(root, filepath.FromSlash(p), ".git"))
			info.Submodules = append(info.Submodules, Submodule{Path: p, Commit: f[1], Initialized: err == nil})
		}
		if path.Base(p) == ".gitattributes" {
			attrFiles = append(attrFiles, p)
		}
	}
	if len(info.Submodules) > 0 {
		urls := submoduleURLs(ctx, root)
		for i := range info.Submodules {
			s := &info.Submodules[i]
			s.URL = urls[s.Path]
			where := ""
			if s.URL != "" {
				where = " (" + s.URL + ")"
			}
			info.Warnings = append(info.Warnings, fmt.Sprintf("submodule %s%s is not copied: the guest gets an empty directory there and its commit %.12s in the history; "+
				"run `git submodule update --init %s` in the guest if it can reach the URL, or vendor the files", s.Path, where, s.Commit, s.Path))
		}
	}

	for _, p := range attrFiles {
		dir := path.Dir(p)
		if dir == "." {
			dir = ""
		}
		info.LFS = append(info.LFS, lfsPatterns(filepath.Join(root, filepath.FromSlash(p)), dir)...)
	}
	if infoAttrs, err := gitLine(ctx, root, "rev-parse", "--git-path", "info/attributes"); err == nil {
		if !filepath.IsAbs(infoAttrs) {
			infoAttrs = filepath.Join(root, infoAttrs)
		}
		info.LFS = append(info.LFS, lfsPatterns(infoAttrs, "")...)
	}
	if len(info.LFS) > 0 {
		sort.Strings(info.LFS)
		info.Warnings = append(info.Warnings, fmt.Sprintf("Git LFS is used (%s): LFS files are copied as they are on disk (content if fetched, pointer files if not) and no LFS objects go to the guest; "+
			"unless git-lfs is installed in the guest, git there shows those files as modified and an export would include them, so avoid changing them in the guest", strings.Join(info.LFS, ", ")))
	}
	return nil
}

// submoduleURLs maps submodule paths to URLs from .gitmodules.
func submoduleURLs(ctx context.Context, root string) map[string]string {
	urls := map[string]string{}
	gm := filepath.Join(root, ".gitmodules")
	if _, err := os.Stat(gm); err != nil {
		return urls
	}
	out, err := hostGit(ctx, root, nil, "config", "-z", "-f", gm, "--get-regexp", `^submodule\..*\.(path|url)$`)
	if err != nil {
		return urls
	}
	paths, byName := map[string]string{}, map[string]string{}
	for _, rec := range splitZ(out) {
		key, val, _ := strings.Cut(rec, "\n")
		name, field, ok := cutLast(strings.TrimPrefix(key, "submodule."), ".")
		if !ok {
			continue
		}
		switch field {
		case "path":
			paths[name] = val
		case "url":
			byName[name] = val
		}
	}
	for name, p := range paths {
		urls[p] = byName[name]
	}
	return urls
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// lfsPatterns returns the patterns of an attributes file that set
// filter=lfs, prefixed with the file's directory.
func lfsPatterns(file, dir string) []string {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	var pats []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		for _, a := range fields[1:] {
			if a == "filter=lfs" {
				p := fields[0]
				if dir != "" {
					p = dir + "/" + p
				}
				pats = append(pats, p)
				break
			}
		}
	}
	return pats
}
