package privileged

import (
	"context"

	"banger/internal/hostnet"
)

var _ hostnet.TapOps = TapOps{}

// TapOps adapts Ops to hostnet.TapOps, so the daemon's tap pool creates,
// renames, deletes and lists its taps through the same backend as
// everything else (in-process, or the root helper for an unprivileged
// daemon). Each call is bounded by the helper's operation timeout.
type TapOps struct {
	Ops    Ops
	Bridge string
}

func (t TapOps) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

func (t TapOps) Create(name string) error {
	ctx, cancel := t.ctx()
	defer cancel()
	return t.Ops.CreateTap(ctx, name, t.Bridge)
}

func (t TapOps) Rename(from, to string) error {
	ctx, cancel := t.ctx()
	defer cancel()
	return t.Ops.RenameTap(ctx, from, to)
}

func (t TapOps) Delete(name string) error {
	ctx, cancel := t.ctx()
	defer cancel()
	return t.Ops.DeleteTap(ctx, name)
}

func (t TapOps) List(prefix string) ([]string, error) {
	ctx, cancel := t.ctx()
	defer cancel()
	return t.Ops.ListTaps(ctx, prefix)
}
