package daemon

import (
	"context"
	"sync"

	"banger/internal/doctor"
	"banger/internal/rpc"
)

// VMChecks are the doctor checks a VM start depends on: a VMM, TUN/TAP for
// its NIC, the ext4 tools for its work disk, qemu-img for qcow2 roots.
var VMChecks = []string{"vmm", "tun", "mkfs.ext4", "qemu-img"}

// preflight runs doctor's checks before an operation that needs host
// features, so it fails before creating anything, with the same evidence
// and fix as `banger doctor`. A check that passed is not run again by this
// daemon; one that failed is, so fixing the host helps at once.
type preflight struct {
	env doctor.Env

	mu     sync.Mutex // guards passed; never held while checks run
	passed map[string]bool
}

func newPreflight(env doctor.Env) *preflight {
	return &preflight{env: env, passed: map[string]bool{}}
}

// run runs the named checks that have not passed yet. A FAIL is an
// rpc.CodeFailedPrecondition error naming each failed check and its fix.
func (p *preflight) run(ctx context.Context, names ...string) error {
	p.mu.Lock()
	var todo []string
	for _, n := range names {
		if !p.passed[n] {
			todo = append(todo, n)
		}
	}
	p.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	rs, err := doctor.Preflight(ctx, p.env, todo...)
	p.mu.Lock()
	for _, r := range rs {
		if r.Status != doctor.Fail {
			p.passed[r.Name] = true
		}
	}
	p.mu.Unlock()
	if err != nil {
		return rpc.Errorf(rpc.CodeFailedPrecondition, "this host cannot run VMs yet: %v (`banger doctor` shows every check)", err)
	}
	return nil
}
