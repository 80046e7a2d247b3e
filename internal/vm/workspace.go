package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"banger/internal/api"
	"banger/internal/guest"
	"banger/internal/rpc"
	"banger/internal/workspace"
)

// sshGuest runs workspace commands over the daemon's SSH connection.
type sshGuest struct{ c *guest.Client }

func (g sshGuest) Run(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return g.c.Exec(ctx, argv, stdin, stdout, stderr)
}

// dialGuest opens an SSH connection to a running VM (waiting while sshd starts).
func (s *Service) dialGuest(ctx context.Context, name string) (*guest.Client, error) {
	v, err := s.running(ctx, name)
	if err != nil {
		return nil, err
	}
	return s.waitSSH(ctx, v)
}

// checkHostDir resolves a user-given host directory before anything reads it.
func checkHostDir(p string) (string, error) {
	if p == "" || !filepath.IsAbs(p) {
		return "", invalid("workspace path %q must be absolute (the CLI resolves it)", p)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", invalid("workspace path %s: %v", p, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", invalid("workspace path %s: %v", p, err)
	}
	if !st.IsDir() {
		return "", invalid("workspace path %s is not a directory", p)
	}
	return real, nil
}

// PrepareWorkspace copies a host directory (a git work tree's tracked files
// and history, or a plain directory) into a running VM and records it.
func (s *Service) PrepareWorkspace(ctx context.Context, p api.WorkspacePrepareParams, progress func(api.Progress)) (api.WorkspacePrepareResult, error) {
	var res api.WorkspacePrepareResult
	path, err := checkHostDir(p.Path)
	if err != nil {
		return res, err
	}
	if p.Dest != "" && (!filepath.IsAbs(p.Dest) || filepath.Clean(p.Dest) != p.Dest) {
		return res, invalid("--dest %q must be a clean absolute guest path, e.g. /root/src", p.Dest)
	}
	if p.From != "" && p.Branch == "" {
		return res, invalid("--from needs --branch (the guest branch to create at that revision)")
	}
	info, err := workspace.Inspect(ctx, path)
	if err != nil {
		return res, invalid("%v", err)
	}
	opts := workspace.Options{IncludeUntracked: p.IncludeUntracked, Dest: p.Dest, Replace: p.Replace, Branch: p.Branch, From: p.From}
	m, err := workspace.Plan(ctx, info, opts)
	if err != nil {
		return res, err
	}
	res.Warnings = append(info.Warnings, m.Warnings...)
	if p.DryRun {
		var b strings.Builder
		if err := m.DryRun(&b); err != nil {
			return res, err
		}
		res.Listing = b.String()
		return res, nil
	}

	v, unlock, err := s.getLocked(ctx, p.Name)
	if err != nil {
		return res, err
	}
	defer unlock()
	c, err := s.dialGuest(ctx, v.Name)
	if err != nil {
		return res, err
	}
	defer c.Close()
	if progress != nil {
		opts.Progress = func(pr workspace.Progress) {
			progress(api.Progress{Phase: pr.Phase, Bytes: pr.Bytes, Total: pr.Total})
		}
	}
	r, err := workspace.Prepare(ctx, sshGuest{c}, info, m, opts)
	if errors.Is(err, workspace.ErrDestNotEmpty) {
		return res, rpc.Errorf(rpc.CodeFailedPrecondition, "%v (use --replace to overwrite it)", err)
	}
	if err != nil {
		return res, fmt.Errorf("workspace: %w", err)
	}
	res.Warnings = append(res.Warnings, r.Warnings...)
	if note := startMise(ctx, sshGuest{c}, info.Root, r.Dest); note != "" {
		res.Warnings = append(res.Warnings, note)
	}
	res.Workspace = api.Workspace{Source: info.Root, Dest: r.Dest, Mode: string(r.Mode), Subdir: info.Subdir,
		BaseCommit: r.BaseCommit, Snapshot: r.Snapshot, Branch: r.Branch, Files: r.Files, Bytes: r.Bytes,
		PreparedAt: nowUTC()}
	ws := res.Workspace
	v.Workspace = &ws
	if err := s.save(&v); err != nil {
		return res, err
	}
	s.Log.Info("workspace prepared", "vm", v.Name, "source", info.Root, "dest", r.Dest, "files", r.Files, "bytes", r.Bytes, "base", r.BaseCommit)
	return res, nil
}

// ExportWorkspace returns the guest's changes as a patch: by default since
// the snapshot of what was copied in (only the guest's own work).
func (s *Service) ExportWorkspace(ctx context.Context, p api.WorkspaceExportParams) (api.WorkspaceExportResult, error) {
	v, err := s.get(ctx, p.Name)
	if err != nil {
		return api.WorkspaceExportResult{}, err
	}
	if v.Workspace == nil {
		return api.WorkspaceExportResult{}, rpc.Errorf(rpc.CodeFailedPrecondition,
			"vm %s has no workspace; copy one in with `banger vm workspace prepare %s PATH`", v.Name, v.Name)
	}
	base := p.BaseCommit
	if base == "" {
		base = v.Workspace.Snapshot
	}
	c, err := s.dialGuest(ctx, v.Name)
	if err != nil {
		return api.WorkspaceExportResult{}, err
	}
	defer c.Close()
	export := workspace.Export
	if p.Commits {
		export = workspace.ExportCommits
	}
	patch, err := export(ctx, sshGuest{c}, v.Workspace.Dest, base)
	if err != nil {
		return api.WorkspaceExportResult{}, fmt.Errorf("workspace export: %w", err)
	}
	return api.WorkspaceExportResult{Patch: string(patch)}, nil
}

// MiseLog is where the background `mise install` of a workspace logs.
const MiseLog = "/root/.cache/banger/mise-install.log"

// startMise starts `mise install` in the background in the guest when the
// repository pins tool versions (.mise.toml or .tool-versions) and the image
// has mise. It returns a note for the user, or "" when it did nothing.
func startMise(ctx context.Context, g workspace.Guest, hostRoot, dest string) string {
	pinned := false
	for _, f := range []string{".mise.toml", ".tool-versions"} {
		if _, err := os.Stat(filepath.Join(hostRoot, f)); err == nil {
			pinned = true
		}
	}
	if !pinned {
		return ""
	}
	script := `command -v mise >/dev/null 2>&1 || exit 3
mkdir -p "$(dirname "$2")" && cd "$1" || exit 1
nohup mise install >"$2" 2>&1 </dev/null &`
	code, err := g.Run(ctx, []string{"sh", "-c", script, "sh", dest, MiseLog}, nil, io.Discard, io.Discard)
	switch {
	case err != nil || code == 1:
		return fmt.Sprintf("could not start `mise install` in the guest (exit %d, %v)", code, err)
	case code == 3:
		return "the repository pins tool versions but the image has no mise; install the tools yourself"
	default:
		return "`mise install` runs in the background; its log is " + MiseLog
	}
}
