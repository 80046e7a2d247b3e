package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Row names of the tap pool phase.
const (
	measurePoolWarmStart = "tap pool warm (4): vm start → agent ready"
	measurePoolWarmNet   = "  stage: network (warm pool)"
	measurePoolColdStart = "tap pool empty (0): vm start → agent ready"
	measurePoolColdNet   = "  stage: network (no pool: tap created)"
)

// poolRuns times `vm start` of one stopped VM with a warm tap pool (the
// default, 4 taps) and with none (network.tap_pool = 0): the daemon is
// restarted with each setting, the VM is started and stopped n times, and
// each start's CLI time and network stage are recorded. The network stage
// is where the pool acts (a rename instead of a create); the rest of a start
// is the guest booting.
func (b *bench) poolRuns(ctx context.Context, rep *report) error {
	bg := b.bg
	const name = "benchpool"
	if _, err := bg.run(ctx, "vm", "create", "--name", name); err != nil {
		return err
	}
	if _, err := bg.run(ctx, "vm", "stop", name); err != nil {
		return err
	}
	for _, p := range []struct {
		size       int
		start, net string
	}{{4, measurePoolWarmStart, measurePoolWarmNet}, {0, measurePoolColdStart, measurePoolColdNet}} {
		if err := bg.restartWithPool(ctx, p.size); err != nil {
			return err
		}
		for i := 1; i <= b.o.n; i++ {
			if err := bg.waitPool(ctx, p.size); err != nil {
				return err
			}
			t := time.Now()
			if _, err := bg.run(ctx, "vm", "start", name); err != nil {
				return err
			}
			d := time.Since(t)
			v, err := bg.show(ctx, name)
			if err != nil {
				return err
			}
			var net time.Duration
			for _, st := range v.Stages {
				if st.Name == "network" {
					net = time.Duration(st.DurationMS * float64(time.Millisecond))
				}
			}
			rep.add(p.start, d)
			rep.add(p.net, net)
			logf("tap pool %d, start %d/%d: %.2f s (network stage %.1f ms)", p.size, i, b.o.n, d.Seconds(), float64(net)/1e6)
			if _, err := bg.run(ctx, "vm", "stop", name); err != nil {
				return err
			}
		}
	}
	_, err := bg.run(ctx, "vm", "delete", "--force", name)
	return err
}

// restartWithPool stops the daemon, sets network.tap_pool and starts it
// again (any CLI call that needs it does).
func (bg *banger) restartWithPool(ctx context.Context, size int) error {
	if err := bg.stopDaemon(ctx); err != nil {
		return err
	}
	cfg := bangerConfig() + fmt.Sprintf("tap_pool = %d\n", size)
	if err := os.WriteFile(filepath.Join(bg.home, "config/banger/config.toml"), []byte(cfg), 0o600); err != nil {
		return err
	}
	_, err := bg.run(ctx, "vm", "list")
	return err
}

// waitPool waits until the daemon reports its pool full (the refill after a
// start runs in the background), so every warm start finds a ready tap.
func (bg *banger) waitPool(ctx context.Context, size int) error {
	want := fmt.Sprintf("%d/%d ready", size, size)
	if size == 0 {
		want = "off"
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := bg.daemonStatus(ctx)
		if err != nil {
			return err
		}
		if strings.HasPrefix(st.TapPool, want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tap pool is %q after 30 s, want %q", st.TapPool, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
