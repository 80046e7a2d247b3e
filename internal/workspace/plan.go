package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Options control Plan and Prepare.
type Options struct {
	// IncludeUntracked also sends untracked files git does not ignore.
	// Ignored files are never sent.
	IncludeUntracked bool

	// Dest is the guest directory; DefaultDest when empty. Absolute.
	Dest string
	// Replace removes an existing, non-empty Dest first. Without it a
	// non-empty Dest is an error (ErrDestNotEmpty).
	Replace bool
	// Branch creates and checks out this guest-side branch at From
	// without touching files.
	Branch string
	// From is a host revision for Branch (default HEAD). It is resolved on
	// the host and shipped with the history.
	From string
	// Depth is how many commits of history to ship: 0 means DefaultDepth,
	// a negative value the whole history.
	Depth int
	// Progress, if set, is called (from another goroutine, never
	// concurrently) as bytes are sent.
	Progress func(Progress)
}

// DefaultDest is where a workspace goes in the guest.
const DefaultDest = "/root/repo"

// DefaultDepth is the history shipped by default: HEAD alone. `git log`,
// `git diff` and `git commit` work; older history stays on the host.
const DefaultDepth = 1

// Progress reports bytes sent to the guest.
type Progress struct {
	// Phase is "files" (file contents of the tar) or "history" (the pack).
	Phase string
	// Bytes sent so far in this phase; Total expected (0 when unknown).
	Bytes, Total int64
	// Files sent so far and planned (files phase only).
	Files, FilesTotal int
}

// Kind is the type of a planned entry.
type Kind uint8

const (
	KindFile Kind = iota
	KindSymlink
	KindDir
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "file"
	case KindSymlink:
		return "symlink"
	case KindDir:
		return "dir"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Entry is one thing to send. Parent directories are implied.
type Entry struct {
	Path      string // slash-separated, relative to the root
	Kind      Kind
	Mode      fs.FileMode // permission bits as on disk
	Size      int64       // regular files
	Link      string      // symlink target
	Untracked bool
}

// Skip is a path that is deliberately not sent.
type Skip struct {
	Path, Reason string
}

// Manifest is the list of entries Prepare sends, as computed by Plan.
type Manifest struct {
	Root    string
	Mode    Mode
	Entries []Entry // sorted by Path
	// Files counts regular files and symlinks; Untracked those of them
	// that git does not track; TotalSize the regular files' bytes.
	Files, Untracked int
	TotalSize        int64
	// Deleted are tracked paths missing from the work tree: not sent, so
	// the guest sees them deleted, as the host does.
	Deleted []string
	// Skipped are not sent, with the reason: submodule contents, nested
	// repositories, sockets and other special files, files outside a
	// sparse checkout (also in Deleted).
	Skipped  []Skip
	Warnings []string
}

// Plan lists what Prepare sends for info.
func Plan(ctx context.Context, info Info, opts Options) (Manifest, error) {
	p := Manifest{Root: info.Root, Mode: info.Mode}
	var err error
	switch info.Mode {
	case ModeGit:
		err = planGit(ctx, info, opts, &p)
	case ModePlain:
		err = planPlain(&p)
	default:
		err = fmt.Errorf("workspace: unknown mode %q", info.Mode)
	}
	if err != nil {
		return Manifest{}, err
	}
	sort.Slice(p.Entries, func(i, j int) bool { return p.Entries[i].Path < p.Entries[j].Path })
	for _, e := range p.Entries {
		if e.Kind == KindDir {
			continue
		}
		p.Files++
		if e.Untracked {
			p.Untracked++
		}
		p.TotalSize += e.Size
	}
	sparse := 0
	for _, s := range p.Skipped {
		if s.Reason == reasonSparse {
			sparse++
		}
	}
	if sparse > 0 {
		p.Warnings = append(p.Warnings, fmt.Sprintf("%d tracked files are outside the sparse checkout: they are absent in the guest, where git shows them as deleted (an export would delete them)", sparse))
	}
	if p.Files == 0 && info.Mode == ModeGit && !opts.IncludeUntracked && info.Untracked {
		p.Warnings = append(p.Warnings, "no tracked files to send: the files here are untracked; include untracked files to copy them")
	}
	return p, nil
}

const reasonSparse = "not checked out (sparse checkout / skip-worktree)"

func planGit(ctx context.Context, info Info, opts Options, p *Manifest) error {
	root := info.Root
	out, err := hostGit(ctx, root, nil, "ls-files", "-z", "-s", "-t")
	if err != nil {
		return err
	}
	parents := parentChecker{root: root, ok: map[string]bool{}}
	seen := map[string]bool{}
	for _, rec := range splitZ(out) {
		meta, rel, ok := strings.Cut(rec, "\t")
		if !ok || seen[rel] {
			continue // unmerged paths have one record per stage
		}
		seen[rel] = true
		f := strings.Fields(meta) // tag mode hash stage
		if len(f) < 2 {
			return fmt.Errorf("workspace: unexpected ls-files record %q", rec)
		}
		if f[1] == "160000" {
			p.Entries = append(p.Entries, Entry{Path: rel, Kind: KindDir, Mode: 0o755})
			p.Skipped = append(p.Skipped, Skip{rel, "submodule: not copied, the guest gets an empty directory"})
			continue
		}
		e, present, err := lstatEntry(root, rel, &parents)
		if err != nil {
			return err
		}
		switch {
		case !present && f[0] == "S":
			p.Skipped = append(p.Skipped, Skip{rel, reasonSparse})
			p.Deleted = append(p.Deleted, rel)
		case !present || e.Kind == KindDir:
			// Deleted in the work tree (or replaced by a directory,
			// whose files are untracked).
			p.Deleted = append(p.Deleted, rel)
		case e.Kind == kindSpecial:
			p.Skipped = append(p.Skipped, Skip{rel, "not a regular file, directory or symlink"})
		default:
			p.Entries = append(p.Entries, e)
		}
	}
	if !opts.IncludeUntracked {
		return nil
	}
	out, err = hostGit(ctx, root, nil, "ls-files", "-z", "--others", "--exclude-standard")
	if err != nil {
		return err
	}
	for _, rel := range splitZ(out) {
		if strings.HasSuffix(rel, "/") {
			p.Skipped = append(p.Skipped, Skip{strings.TrimSuffix(rel, "/"), "nested git repository: not copied"})
			continue
		}
		e, present, err := lstatEntry(root, rel, &parents)
		if err != nil {
			return err
		}
		if !present || e.Kind == KindDir {
			continue // vanished since git listed it
		}
		if e.Kind == kindSpecial {
			p.Skipped = append(p.Skipped, Skip{rel, "not a regular file, directory or symlink"})
			continue
		}
		e.Untracked = true
		p.Entries = append(p.Entries, e)
	}
	return nil
}

// kindSpecial marks sockets, fifos and devices (never sent).
const kindSpecial Kind = 255

// lstatEntry describes root/rel without following symlinks, anywhere in the
// path: a tracked path under a directory that became a symlink is absent
// (git would say "beyond a symbolic link"), so a repo can't pull in files
// from elsewhere on the host.
func lstatEntry(root, rel string, parents *parentChecker) (Entry, bool, error) {
	if !parents.check(path.Dir(rel)) {
		return Entry{}, false, nil
	}
	abs := filepath.Join(root, filepath.FromSlash(rel))
	fi, err := os.Lstat(abs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return Entry{}, false, nil
		}
		return Entry{}, false, fmt.Errorf("workspace: %w", err)
	}
	e, err := entryFor(rel, abs, fi)
	return e, err == nil, err
}

func entryFor(rel, abs string, fi fs.FileInfo) (Entry, error) {
	e := Entry{Path: rel, Mode: fi.Mode().Perm()}
	switch {
	case fi.Mode().IsRegular():
		e.Kind, e.Size = KindFile, fi.Size()
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Kind = KindSymlink
		target, err := os.Readlink(abs)
		if err != nil {
			return Entry{}, fmt.Errorf("workspace: %w", err)
		}
		e.Link = target
	case fi.IsDir():
		e.Kind = KindDir
	default:
		e.Kind = kindSpecial
	}
	return e, nil
}

// parentChecker caches which directories under root are real directories.
type parentChecker struct {
	root string
	ok   map[string]bool
}

func (c *parentChecker) check(dir string) bool {
	if dir == "." || dir == "" {
		return true
	}
	if v, seen := c.ok[dir]; seen {
		return v
	}
	v := c.check(path.Dir(dir))
	if v {
		fi, err := os.Lstat(filepath.Join(c.root, filepath.FromSlash(dir)))
		v = err == nil && fi.IsDir()
	}
	c.ok[dir] = v
	return v
}

func planPlain(p *Manifest) error {
	root := p.Root
	return filepath.WalkDir(root, func(abs string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		if abs == root {
			return nil
		}
		rel, err := filepath.Rel(root, abs)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		e, err := entryFor(rel, abs, fi)
		if err != nil {
			return err
		}
		if e.Kind == kindSpecial {
			p.Skipped = append(p.Skipped, Skip{rel, "not a regular file, directory or symlink"})
			return nil
		}
		e.Untracked = true
		p.Entries = append(p.Entries, e)
		return nil
	})
}

// DryRun writes the plan for a person: one line per entry, then what is
// skipped and the totals.
func (p Manifest) DryRun(w io.Writer) error {
	ew := &errWriter{w: w}
	for _, e := range p.Entries {
		switch e.Kind {
		case KindFile:
			tag := ""
			if e.Untracked && p.Mode == ModeGit {
				tag = "  (untracked)"
			}
			fmt.Fprintf(ew, "%10s  %s%s\n", HumanBytes(e.Size), printable(e.Path), tag)
		case KindSymlink:
			fmt.Fprintf(ew, "%10s  %s -> %s\n", "link", printable(e.Path), printable(e.Link))
		case KindDir:
			fmt.Fprintf(ew, "%10s  %s/\n", "dir", printable(e.Path))
		}
	}
	for _, d := range p.Deleted {
		fmt.Fprintf(ew, "%10s  %s\n", "deleted", printable(d))
	}
	for _, s := range p.Skipped {
		fmt.Fprintf(ew, "%10s  %s: %s\n", "skipped", printable(s.Path), s.Reason)
	}
	if p.Mode == ModeGit {
		fmt.Fprintf(ew, "%d files (%d untracked), %s (%d bytes) from %s\n", p.Files, p.Untracked, HumanBytes(p.TotalSize), p.TotalSize, p.Root)
	} else {
		fmt.Fprintf(ew, "%d files, %s (%d bytes) from %s (plain directory)\n", p.Files, HumanBytes(p.TotalSize), p.TotalSize, p.Root)
	}
	for _, warn := range p.Warnings {
		fmt.Fprintf(ew, "warning: %s\n", warn)
	}
	return ew.err
}

// printable quotes a path that contains control characters.
func printable(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return strconv.Quote(s)
		}
	}
	return s
}

// HumanBytes formats n with binary units: "512 B", "1.5 KiB", "3.2 GiB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(b []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(b)
	e.err = err
	return n, err
}
