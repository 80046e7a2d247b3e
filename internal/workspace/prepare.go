package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrDestNotEmpty: Prepare found files at Dest and Options.Replace is off.
var ErrDestNotEmpty = errors.New("destination is not empty")

// Result is what Prepare did.
type Result struct {
	Dest string
	Mode Mode
	// BaseCommit is the commit the guest's HEAD starts at: the host's HEAD,
	// or Options.From with Options.Branch. Export(…, BaseCommit) is the
	// guest's work relative to it, including the host's uncommitted changes
	// that were copied. "" for an empty repository (export then diffs
	// against the empty tree) or when the guest has no git. In plain mode it
	// is the guest-only snapshot commit.
	BaseCommit string
	// Snapshot is a guest commit (parent BaseCommit, ref
	// refs/banger/snapshot) whose tree is the work tree as copied; equal to
	// BaseCommit when nothing uncommitted was copied. Export(…, Snapshot) is
	// only what changed in the guest, a patch that applies to the host's
	// work tree as it was copied.
	Snapshot string
	// Branch is the guest's checked-out branch ("" when detached).
	Branch string
	// History: the guest has a git repository (false when git is missing
	// there; files were copied anyway).
	History bool
	// Files and Bytes sent (regular files and symlinks; content bytes).
	Files int
	Bytes int64
	// Depth of history shipped (negative: all of it).
	Depth    int
	Warnings []string
}

// Prepare copies m into the guest at opts.Dest and sets up git there.
func Prepare(ctx context.Context, g Guest, info Info, m Manifest, opts Options) (Result, error) {
	dest, err := cleanDest(opts.Dest)
	if err != nil {
		return Result{}, err
	}
	if m.Root != info.Root || m.Mode != info.Mode {
		return Result{}, fmt.Errorf("workspace: the plan is for %s (%s), not %s (%s)", m.Root, m.Mode, info.Root, info.Mode)
	}
	if opts.Replace && strings.Count(dest, "/") < 2 {
		return Result{}, fmt.Errorf("workspace: refusing to replace %s: give a destination at least two levels deep, like %s", dest, DefaultDest)
	}
	depth := opts.Depth
	if depth == 0 {
		depth = DefaultDepth
	}
	res := Result{Dest: dest, Mode: info.Mode, Depth: depth}

	// Resolve revisions on the host before touching the guest.
	start := info.Head
	if opts.From != "" {
		if opts.Branch == "" {
			return Result{}, errors.New("workspace: From needs Branch (the guest branch to create at From)")
		}
		if info.Mode != ModeGit || info.Head == "" {
			return Result{}, fmt.Errorf("workspace: From %q: %s has no commits", opts.From, info.Root)
		}
		if strings.HasPrefix(opts.From, "-") {
			return Result{}, fmt.Errorf("workspace: From %q: not a revision", opts.From)
		}
		start, err = gitLine(ctx, info.Root, "rev-parse", "-q", "--verify", opts.From+"^{commit}")
		if err != nil || start == "" {
			return Result{}, fmt.Errorf("workspace: From %q is not a commit in %s", opts.From, info.Root)
		}
	}
	if opts.Branch != "" {
		if err := checkBranchName(ctx, info, opts.Branch); err != nil {
			return Result{}, err
		}
	}

	// The history to ship, gathered before touching the guest so that a
	// host-side failure leaves the guest alone.
	var histRepo string
	var shallow, wants []string
	if info.Mode == ModeGit && info.Head != "" {
		wants = []string{info.Head}
		if start != info.Head {
			wants = append(wants, start)
		}
		histRepo, shallow, err = shallowRepo(ctx, info, wants, depth)
		if histRepo != "" {
			defer os.RemoveAll(histRepo)
		}
		if err != nil {
			return Result{}, err
		}
	}

	// 1. Destination, and is git there?
	var out strings.Builder
	replace := "0"
	if opts.Replace {
		replace = "1"
	}
	if err := runGuest(ctx, g, "create "+dest, shArgv(setupScript, dest, replace), nil, &out); err != nil {
		var ce *CommandError
		if errors.As(err, &ce) && ce.ExitCode == 3 {
			return Result{}, fmt.Errorf("workspace: %s in the guest: %w (replace it, or choose another destination)", dest, ErrDestNotEmpty)
		}
		return Result{}, err
	}
	res.History = keyValues([]byte(out.String()))["git"] == "yes"

	// 2. Files.
	files := 0
	var sent int64
	snd, err := sendFiles(ctx, g, dest, m, func(p Progress) {
		files, sent = p.Files, p.Bytes
		if opts.Progress != nil {
			opts.Progress(p)
		}
	})
	if err != nil {
		return Result{}, err
	}
	res.Files, res.Bytes = files, sent
	if len(snd.vanish) > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%d planned files disappeared before they were sent (the guest sees them deleted): %s", len(snd.vanish), strings.Join(firstN(snd.vanish, 5), ", ")))
	}

	// 3. History.
	if !res.History {
		res.Warnings = append(res.Warnings, "git is not installed in the guest: the files were copied, but no history, and Export is unavailable; add git to the image")
		return res, nil
	}
	hostBranch := ""
	if info.Mode == ModeGit {
		hostBranch = info.Branch
	}
	args := []string{dest, string(info.Mode), info.Head, hostBranch, opts.Branch, start,
		info.Identity.Name, info.Identity.Email, info.ObjectFormat, hostExcludes(ctx, info, &res)}
	var kv strings.Builder
	if histRepo != "" {
		args = append(args, shallow...)
		err = streamTo(ctx, g, "set up git history", shArgv(historyScript, args...), &kv, func(w io.Writer) error {
			return packObjects(ctx, histRepo, wants, w, opts.Progress)
		})
		if err != nil {
			return Result{}, err
		}
	} else if err := runGuest(ctx, g, "set up git repository", shArgv(historyScript, args...), nil, &kv); err != nil {
		return Result{}, err
	}
	got := keyValues([]byte(kv.String()))
	res.BaseCommit, res.Snapshot, res.Branch = got["base"], got["snapshot"], got["branch"]
	if info.Mode == ModeGit && res.BaseCommit != start {
		return Result{}, fmt.Errorf("workspace: guest HEAD is %q, expected %q", res.BaseCommit, start)
	}
	return res, nil
}

// cleanDest validates a guest destination directory.
func cleanDest(dest string) (string, error) {
	if dest == "" {
		return DefaultDest, nil
	}
	if !path.IsAbs(dest) {
		return "", fmt.Errorf("workspace: destination %q must be an absolute guest path", dest)
	}
	dest = path.Clean(dest)
	if dest == "/" {
		return "", errors.New("workspace: destination cannot be /")
	}
	return dest, nil
}

func checkBranchName(ctx context.Context, info Info, name string) error {
	dir := info.Root
	if strings.HasPrefix(name, "-") {
		return fmt.Errorf("workspace: %q is not a valid branch name", name)
	}
	// check-ref-format needs no repository.
	if _, err := hostGit(ctx, dir, nil, "check-ref-format", "refs/heads/"+name); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil // plain mode on a host without git; the guest checks
		}
		return fmt.Errorf("workspace: %q is not a valid branch name", name)
	}
	return nil
}

// sendFiles streams the manifest as a tar into `tar -x` at dest.
func sendFiles(ctx context.Context, g Guest, dest string, m Manifest, progress func(Progress)) (*tarSender, error) {
	var snd *tarSender
	p := Progress{Phase: "files", Total: m.TotalSize, FilesTotal: m.Files}
	// -p keeps modes for a non-root user too; --no-same-owner makes the
	// files the extracting user's whatever uid the host had.
	argv := []string{"tar", "-x", "-p", "--no-same-owner", "-f", "-", "-C", dest}
	err := streamTo(ctx, g, "extract files into "+dest, argv, nil, func(w io.Writer) error {
		snd = newTarSender(w, func(n int64) {
			p.Bytes += n
			progress(p)
		})
		for _, e := range m.Entries {
			if err := snd.parents(m.Root, e.Path); err != nil {
				return err
			}
			before := snd.written
			if err := snd.entry(e.Path, filepath.Join(m.Root, filepath.FromSlash(e.Path)), e); err != nil {
				return err
			}
			if snd.written > before {
				p.Files = snd.written
				progress(p)
			}
		}
		return snd.close()
	})
	return snd, err
}

// streamTo runs argv in the guest with produce's output as its stdin.
// A host-side failure is reported in preference to the guest's (which is
// then usually just a truncated stream).
func streamTo(ctx context.Context, g Guest, step string, argv []string, stdout io.Writer, produce func(io.Writer) error) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := produce(pw)
		pw.CloseWithError(err)
		done <- err
	}()
	gerr := runGuest(ctx, g, step, argv, pr, stdout)
	pr.CloseWithError(errStreamAborted)
	perr := <-done
	if perr != nil && !errors.Is(perr, errStreamAborted) {
		return perr
	}
	if gerr == nil && perr != nil {
		return fmt.Errorf("guest: %s: %w", step, perr)
	}
	return gerr
}

// shallowRepo fetches wants with the given depth from the host repository
// into a temporary bare repository and returns it with its shallow
// boundary. Fetching (rather than bundling HEAD) is what makes the history
// shallow: git computes the boundary as `clone --depth` would.
func shallowRepo(ctx context.Context, info Info, wants []string, depth int) (string, []string, error) {
	tmp, err := os.MkdirTemp("", "banger-workspace-*.git")
	if err != nil {
		return "", nil, err
	}
	initArgs := []string{"init", "-q", "--bare"}
	if info.ObjectFormat != "" && info.ObjectFormat != "sha1" {
		initArgs = append(initArgs, "--object-format="+info.ObjectFormat)
	}
	if _, err := hostGit(ctx, tmp, nil, initArgs...); err != nil {
		return tmp, nil, err
	}
	// Protocol v2 lets us want any reachable commit by hash; no tags, no
	// maintenance, nothing written to the user's repository.
	fetch := []string{"-c", "protocol.version=2", "-c", "maintenance.auto=false", "-c", "gc.auto=0",
		"fetch", "-q", "--no-tags", "--no-write-fetch-head"}
	if depth > 0 {
		fetch = append(fetch, "--depth="+strconv.Itoa(depth))
	}
	fetch = append(fetch, info.Root)
	fetch = append(fetch, wants...)
	if _, err := hostGit(ctx, tmp, nil, fetch...); err != nil {
		return tmp, nil, fmt.Errorf("workspace: collecting history: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(tmp, "shallow"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return tmp, nil, err
	}
	return tmp, strings.Fields(string(b)), nil
}

// packObjects writes a self-contained pack of wants (and, within the
// shallow boundary of repo, everything they reach) to w.
func packObjects(ctx context.Context, repo string, wants []string, w io.Writer, progress func(Progress)) error {
	var dst io.Writer = w
	if progress != nil {
		p := Progress{Phase: "history"}
		dst = writerFunc(func(b []byte) (int, error) {
			n, err := w.Write(b)
			p.Bytes += int64(n)
			progress(p)
			return n, err
		})
	}
	return hostGitTo(ctx, repo, strings.NewReader(strings.Join(wants, "\n")+"\n"), dst,
		"pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// hostExcludes returns the host's ignore rules that do not travel with the
// work tree (.git/info/exclude and core.excludesFile), so the guest ignores
// (and Export leaves out) what the host would.
func hostExcludes(ctx context.Context, info Info, res *Result) string {
	if info.Mode != ModeGit {
		return ""
	}
	var files []string
	if p, err := gitLine(ctx, info.Root, "rev-parse", "--git-path", "info/exclude"); err == nil && p != "" {
		if !filepath.IsAbs(p) {
			p = filepath.Join(info.Root, p)
		}
		files = append(files, p)
	}
	if p, _ := gitOptional(ctx, info.Root, "config", "--path", "--get", "core.excludesFile"); p != "" {
		files = append(files, p)
	} else if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
		files = append(files, filepath.Join(x, "git", "ignore"))
	} else if h, err := os.UserHomeDir(); err == nil {
		files = append(files, filepath.Join(h, ".config", "git", "ignore"))
	}
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimRight(line, "\r")
			if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
				continue
			}
			b.WriteString(line + "\n")
		}
	}
	const max = 64 << 10
	if b.Len() > max {
		res.Warnings = append(res.Warnings, "the host's global and repository exclude files are over 64 KiB and were not copied to the guest: files they ignore may show up in an export")
		return ""
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "…")
	}
	return s
}

// setupScript: $1 dest, $2 "1" to replace. Exit 3: not empty.
const setupScript = `set -e
dest=$1
if [ "$2" = 1 ]; then rm -rf -- "$dest"; fi
mkdir -p -- "$dest"
if [ -n "$(ls -A -- "$dest" | head -n 1)" ]; then
	echo "$dest exists and is not empty" >&2
	exit 3
fi
if command -v git >/dev/null 2>&1; then echo git=yes; else echo git=no; fi
`

// historyScript sets up the guest repository in dest, which holds the
// copied files. Positional: dest mode head hostbranch branch start name
// email objectformat excludes [shallow...]; stdin: a pack (git mode with a
// head). Prints base=, snapshot=, branch=.
const historyScript = `set -e
dest=$1 mode=$2 head=$3 hostbranch=$4 branch=$5 start=$6 name=$7 email=$8 format=$9
shift 9
excludes=$1
shift
cd -- "$dest"
if [ -n "$format" ] && [ "$format" != sha1 ]; then
	git init -q --object-format="$format"
else
	git init -q
fi
gitdir=$(git rev-parse --absolute-git-dir)
if [ -n "$name" ]; then git config user.name "$name"; fi
if [ -n "$email" ]; then git config user.email "$email"; fi
if [ -n "$excludes" ]; then
	mkdir -p "$gitdir/info"
	printf '%s\n' "$excludes" >> "$gitdir/info/exclude"
fi
GIT_AUTHOR_NAME=banger GIT_AUTHOR_EMAIL=banger@localhost
GIT_COMMITTER_NAME=banger GIT_COMMITTER_EMAIL=banger@localhost
export GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL
if [ -n "$head" ]; then
	if [ $# -gt 0 ]; then printf '%s\n' "$@" > "$gitdir/shallow"; fi
	git index-pack --stdin >/dev/null
	if [ -n "$hostbranch" ] && [ "$hostbranch" != "$branch" ]; then
		git update-ref "refs/heads/$hostbranch" "$head"
	fi
	if [ -n "$branch" ]; then
		git update-ref "refs/heads/$branch" "$start"
		git symbolic-ref HEAD "refs/heads/$branch"
	elif [ -n "$hostbranch" ]; then
		git symbolic-ref HEAD "refs/heads/$hostbranch"
	else
		git update-ref --no-deref HEAD "$head"
	fi
	git reset -q
elif [ -n "$branch" ]; then
	git symbolic-ref HEAD "refs/heads/$branch"
elif [ -n "$hostbranch" ]; then
	git symbolic-ref HEAD "refs/heads/$hostbranch"
fi
if [ "$mode" = plain ]; then
	git add -A
	tree=$(git write-tree)
	snap=$(git -c commit.gpgSign=false commit-tree -m "banger: files as copied from the host" "$tree")
	git update-ref HEAD "$snap"
	base=$snap
else
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/banger-prepare.XXXXXX")
	trap 'rm -rf -- "$tmp"' EXIT
	index=$(git rev-parse --git-path index)
	if [ -f "$index" ]; then cp -- "$index" "$tmp/index"; fi
	GIT_INDEX_FILE=$tmp/index git add -A
	tree=$(GIT_INDEX_FILE=$tmp/index git write-tree)
	base=$start
	if [ -n "$head" ] && [ "$tree" = "$(git rev-parse HEAD^{tree})" ]; then
		snap=$start
	else
		if [ -n "$head" ]; then
			snap=$(git -c commit.gpgSign=false commit-tree -p HEAD -m "banger: work tree as copied from the host" "$tree")
		else
			snap=$(git -c commit.gpgSign=false commit-tree -m "banger: work tree as copied from the host" "$tree")
		fi
		git update-ref refs/banger/snapshot "$snap"
	fi
fi
echo "base=$base"
echo "snapshot=$snap"
echo "branch=$(git symbolic-ref -q --short HEAD || :)"
`
