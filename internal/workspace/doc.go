// Package workspace copies a host directory into a guest and exports the
// changes made there back as a patch.
//
// The flow is Inspect → Plan → Prepare, later Export:
//
//   - Inspect resolves a host path. Inside a git work tree it reports the top
//     of the work tree, HEAD, branch, dirty state, submodules and Git LFS use
//     (each with a warning that explains what happens to it). A directory
//     that is not in a git work tree is mode "plain": it is copied as plain
//     files, without history.
//   - Plan lists what is sent: the tracked files as they are on disk (tracked
//     files deleted from the work tree are not sent), plus, when asked, the
//     untracked files git does not ignore. Ignored files (.env, build output)
//     never go. A plain directory is sent whole.
//   - Prepare streams the planned files to the guest as one tar (modes,
//     executable bits and symlinks kept) and gives the guest a git repository:
//     a shallow pack of the host's HEAD (Options.Depth commits, 1 by default)
//     and the branch, so `git log`, `git diff` and `git commit` work there. The
//     guest's index is HEAD's tree, so `git status` in the guest shows the
//     host's uncommitted changes as unstaged. A plain directory gets a fresh
//     repository with one snapshot commit, so export works for it too.
//   - Export returns the guest's changes since a base commit — its commits and
//     its uncommitted, untracked-but-not-ignored files — as one binary git
//     patch. It works on a temporary index and a temporary object directory,
//     so the guest's own index, work tree and object store are not modified.
//
// Nothing here knows how commands reach the guest: Guest is an interface
// (SSH or the guest agent in the daemon, Local in tests and on the host).
// Guest commands are plain argv; where several steps are batched into one
// round trip the argv is `sh -c SCRIPT sh ARGS...` with every value passed as
// a positional parameter, never spliced into the script.
//
// Guest requirements: sh, mkdir, ls, head, rm, mktemp, cp and tar (GNU or BusyBox);
// git for history and export (without git in the guest the files are still
// copied and Result.Warnings says history was skipped).
//
// Host files are read with the permissions of the calling process: run
// Inspect, Plan and Prepare as the user who owns the work tree (the CLI
// process, or the daemon on that user's behalf after checking the caller may
// read the path). Host git runs with the caller's configuration, so a repo
// owned by another user fails with git's "dubious ownership" error, which is
// reported rather than bypassed.
package workspace
