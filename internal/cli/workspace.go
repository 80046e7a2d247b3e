package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

func (a *app) vmWorkspaceCmd() *cobra.Command {
	c := &cobra.Command{Use: "workspace", Short: "Copy a repository into a VM and get the changes made there back as a patch"}
	c.AddCommand(a.vmWorkspacePrepareCmd(), a.vmWorkspaceExportCmd())
	return c
}

func (a *app) vmWorkspacePrepareCmd() *cobra.Command {
	var p api.WorkspacePrepareParams
	c := &cobra.Command{
		Use:   "prepare NAME PATH",
		Short: "Copy a git work tree (tracked files + recent history) or a plain directory into a running VM",
		Long: "Copy PATH into the VM (default /root/repo). In a git work tree the tracked files go as they are\n" +
			"on disk, with enough history for git log/diff/commit; ignored files never go, untracked ones only\n" +
			"with --include-untracked. Submodules and Git LFS are reported, not half-copied.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			res, err := a.prepareWorkspace(cmd.Context(), p, args[1])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res)
			}
			if p.DryRun {
				fmt.Fprint(a.stdout, res.Listing)
			}
			return nil
		},
	}
	a.workspaceFlags(c, &p)
	c.Flags().BoolVar(&p.DryRun, "dry-run", false, "list what would be sent and its size; copy nothing")
	c.Flags().BoolVar(&p.Replace, "replace", false, "replace an existing, non-empty destination")
	return a.addJSON(c)
}

func (a *app) workspaceFlags(c *cobra.Command, p *api.WorkspacePrepareParams) {
	f := c.Flags()
	f.StringVar(&p.Dest, "dest", "", "guest directory (default /root/repo)")
	f.BoolVar(&p.IncludeUntracked, "include-untracked", false, "also send untracked files git does not ignore")
	f.StringVar(&p.Branch, "branch", "", "create and check out this branch in the guest")
	f.StringVar(&p.From, "from", "", "host revision the --branch starts at (default HEAD)")
}

// prepareWorkspace resolves path here (the daemon needs it absolute), runs
// the copy with a progress line, and prints the warnings.
func (a *app) prepareWorkspace(ctx context.Context, p api.WorkspacePrepareParams, path string) (api.WorkspacePrepareResult, error) {
	var res api.WorkspacePrepareResult
	abs, err := filepath.Abs(path)
	if err != nil {
		return res, err
	}
	p.Path = abs
	cl, err := a.connect(ctx)
	if err != nil {
		return res, err
	}
	defer cl.Close()
	prog := newByteProgress(a.stderr)
	err = cl.CallStream(ctx, api.MethodVMWorkspacePrepare, p, &res, func(event string, data json.RawMessage) {
		var pr api.Progress
		if event == api.EventProgress && json.Unmarshal(data, &pr) == nil {
			prog.update(pr)
		}
	})
	prog.close()
	for _, w := range res.Warnings {
		fmt.Fprintf(a.stderr, "warning: %s\n", w)
	}
	if err == nil && !p.DryRun {
		ws := res.Workspace
		base := ws.BaseCommit
		if len(base) > 12 {
			base = base[:12]
		}
		fmt.Fprintf(a.stderr, "workspace: %d files (%s) from %s in %s:%s", ws.Files, humanBytes(ws.Bytes), ws.Source, p.Name, ws.Dest)
		if base != "" {
			fmt.Fprintf(a.stderr, " at %s", base)
		}
		fmt.Fprintln(a.stderr)
	}
	return res, err
}

func (a *app) vmWorkspaceExportCmd() *cobra.Command {
	var p api.WorkspaceExportParams
	var out string
	c := &cobra.Command{
		Use:   "export NAME [-o FILE]",
		Short: "Print the guest's changes to its workspace as a patch for `git apply` (or `git am` with --commits)",
		Long: "Print the changes made in the VM's workspace — commits and uncommitted edits, new files, deletions,\n" +
			"renames, mode changes, binary files — as one patch. By default it is only what changed in the guest\n" +
			"(it applies to the host tree as it was copied); --base-commit SHA diffs against that commit instead.\n" +
			"The guest's index and work tree are not touched.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			var res api.WorkspaceExportResult
			if err := a.call(cmd.Context(), api.MethodVMWorkspaceExport, p, &res); err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err := fmt.Fprint(a.stdout, res.Patch)
				return err
			}
			return os.WriteFile(out, []byte(res.Patch), 0o644)
		},
	}
	c.Flags().StringVar(&p.BaseCommit, "base-commit", "", "diff against this commit (e.g. the workspace's base_commit from `vm show --json`)")
	c.Flags().BoolVar(&p.Commits, "commits", false, "export the guest's commits as an mbox for `git am`")
	c.Flags().StringVarP(&out, "output", "o", "", "write the patch to FILE instead of stdout")
	return c
}
