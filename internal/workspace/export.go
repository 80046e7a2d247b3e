package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
)

// ErrNoRepository: Export found no git repository at the destination.
var ErrNoRepository = errors.New("no git repository in the guest workspace")

var hashRE = regexp.MustCompile(`^([0-9a-f]{40}|[0-9a-f]{64})$`)

// Export returns the guest's changes in dest since base as one git patch:
// commits made in the guest and the uncommitted state of its work tree,
// untracked files included, ignored files not. `git apply` of it on a
// checkout of base reproduces the guest's files (contents, executable bits,
// symlinks; binary files, renames, deletions and any file name included).
// base is a full commit hash (Result.BaseCommit or Result.Snapshot); ""
// means the empty tree (an empty repository). An empty patch means no
// changes.
//
// The guest's repository is left as it was: the work tree is staged into a
// copy of its index, and new blobs go to a temporary object directory, both
// removed afterwards.
func Export(ctx context.Context, g Guest, dest, base string) ([]byte, error) {
	return export(ctx, g, dest, base, "diff")
}

// ExportCommits returns the guest's commits since base (a commit hash; ""
// for all of them) as an mbox for `git am`, or nothing when there are none.
// Uncommitted changes are not included (see Export), nor are merge commits
// (git format-patch skips them).
func ExportCommits(ctx context.Context, g Guest, dest, base string) ([]byte, error) {
	return export(ctx, g, dest, base, "commits")
}

func export(ctx context.Context, g Guest, dest, base, what string) ([]byte, error) {
	dest, err := cleanDest(dest)
	if err != nil {
		return nil, err
	}
	if base != "" && !hashRE.MatchString(base) {
		return nil, fmt.Errorf("workspace: base %q is not a full commit hash", base)
	}
	var out bytes.Buffer
	err = runGuest(ctx, g, "export changes from "+dest, shArgv(exportScript, dest, base, what), nil, &out)
	var ce *CommandError
	if errors.As(err, &ce) {
		switch ce.ExitCode {
		case 5:
			return nil, fmt.Errorf("workspace: %s: %w (was it prepared without git in the guest?)", dest, ErrNoRepository)
		case 4:
			return nil, fmt.Errorf("workspace: base %s is not in the guest repository at %s", base, dest)
		}
	}
	if err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// exportScript: $1 dest, $2 base ("" = empty tree), $3 diff|commits.
// Exit 5: no repository; 4: base unknown.
const exportScript = `set -e
cd -- "$1" 2>/dev/null || { echo "$1: no such directory" >&2; exit 5; }
base=$2 what=$3
top=$(git rev-parse --show-toplevel 2>/dev/null) || { echo "$1 is not in a git repository" >&2; exit 5; }
# A repository further up (a dotfiles repo in the home, say) is not ours.
[ "$top" = "$(pwd -P)" ] || { echo "$1 is not the top of a git work tree" >&2; exit 5; }
# Whatever the guest's configuration, produce a patch git apply/am reads:
# a/ b/ prefixes, paths from the top, raw UTF-8 names, no colour, no
# external diff or textconv.
g() {
	git -c core.quotepath=off -c diff.noprefix=false -c diff.mnemonicPrefix=false \
		-c diff.relative=false -c color.ui=false -c log.showSignature=false "$@"
}
if [ "$what" = commits ]; then
	git rev-parse -q --verify HEAD >/dev/null || exit 0
	if [ -z "$base" ]; then
		g format-patch --stdout --binary -M --no-color --src-prefix=a/ --dst-prefix=b/ \
			--no-cover-letter --no-thread --no-attach --root HEAD
		exit 0
	fi
	git cat-file -e "$base^{commit}" 2>/dev/null || { echo "base $base is not a commit here" >&2; exit 4; }
	g format-patch --stdout --binary -M --no-color --src-prefix=a/ --dst-prefix=b/ \
		--no-cover-letter --no-thread --no-attach "$base..HEAD"
	exit 0
fi
if [ -z "$base" ]; then base=$(git hash-object -t tree /dev/null); fi
git cat-file -e "$base^{tree}" 2>/dev/null || { echo "base $base is not in this repository" >&2; exit 4; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/banger-export.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
index=$(git rev-parse --git-path index)
if [ -f "$index" ]; then cp -- "$index" "$tmp/index"; fi
objects=$(cd -- "$(git rev-parse --git-path objects)" && pwd -P)
GIT_INDEX_FILE=$tmp/index
export GIT_INDEX_FILE
case $objects in
*:*) ;; # cannot be listed in GIT_ALTERNATE_OBJECT_DIRECTORIES; write blobs in place
*)
	mkdir "$tmp/objects"
	GIT_OBJECT_DIRECTORY=$tmp/objects GIT_ALTERNATE_OBJECT_DIRECTORIES=$objects
	export GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
	;;
esac
git add -A
g diff --cached --binary -M --no-color --no-ext-diff --no-textconv --src-prefix=a/ --dst-prefix=b/ "$base" --
`
