package recipe

import (
	"context"
	"os"
)

// Check says, without changing anything, whether this host can build the
// built-in recipe name: it exists, the daemon runs as root, the tools are
// installed and apt has a source for its suite. The daemon calls it before
// starting a recipe build (image pull NAME, or vm create on first use), so a request that cannot
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
