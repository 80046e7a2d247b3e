package recipe

import (
	"context"
	"os"
)

// Check says, without changing anything, whether this host can build the
// built-in recipe name: it exists, the daemon runs as root, the tools are
// installed and apt has a source for its suite. A daemon calls it before
// starting an `image pull NAME --build` operation, so a request that cannot
// succeed is refused at once with the reason and its fix.
func Check(ctx context.Context, name string) (*Recipe, error) {
	r, err := Get(name)
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, notRoot(r)
	}
	for _, t := range buildTools {
		if _, err := lookTool(t); err != nil {
			return nil, err
		}
	}
	if _, err := hostMirror(ctx, r.Suite); err != nil {
		return nil, err
	}
	return r, nil
}

// BuildNamed is the daemon's entry point for `image pull NAME --build`, and
// for the fallback when NAME's catalog bundle cannot be fetched: it builds
// the built-in recipe name from the host's apt source into stagingDir (an
// image store's staging directory, existing and empty; the caller renames
// it into place or removes it), reporting each stage through run. The
// result's RootFS and WorkSeed are inside stagingDir.
func BuildNamed(ctx context.Context, name, stagingDir string, run StageRunner) (Result, error) {
	r, err := Check(ctx, name)
	if err != nil {
		return Result{}, err
	}
	return Build(ctx, r, stagingDir, Options{}, run)
}
