// Command bench measures how long a fresh guest takes to answer SSH when QEMU
// is launched by hand ("raw") and when banger creates it (`banger vm
// create`, which returns when the guest agent answers), for the same kernel
// and root filesystem in one run, and breaks banger's time down by the
// stages its daemon reports. It also times create → first command through
// the agent (`vm exec`) and through SSH (`vm ssh`), each on its own fresh
// VM, and copying a generated ~60 MB git repository into a running VM with
// `banger vm workspace prepare` and with `git archive | ssh tar -x`.
//
// Usage, as root, from the repository:
//
//	go run ./test/bench [-n 3] [-guest DIR] [-json]
//
// Both ways boot the test guest of test/fixture (1 vCPU, 512 MiB, QEMU TCG,
// a qcow2 overlay over rootfs.ext4 and a 256 MiB ext4 work disk holding
// /root/.ssh/authorized_keys), N times each, alternating, one guest at a time;
// then N copies each way into one more banger VM, alternating.
//
// Isolation: everything runs inside a network namespace made for the run
// (bgbench-<hex>) and under one temporary directory (bangerbench-*), which
// holds the banger binaries built for the run and an isolated banger home
// (XDG_* variables). On every exit path, including errors and Ctrl-C, the
// program deletes its VMs, stops its daemon, kills the QEMU it started (by the
// pid it holds), deletes the namespace and the directory, then checks that no
// process mentioning the directory and no namespace of the run is left; it
// exits non-zero if something is. See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

// Guest shape shared by both ways of booting.
const (
	guestVCPU      = 1
	guestMemoryMiB = 512
	workDiskMiB    = 256
)

type options struct {
	n     int    // iterations of each way
	guest string // fixture directory; "" = build-guest.sh --print-dir
	json  bool   // print the results as JSON instead of a table
	only  string // "" (everything) or one phase: "boot", "workspace", "pool"
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 3, "iterations of each way (raw and banger), alternating")
	flag.StringVar(&o.guest, "guest", "", "test guest directory (default: output of test/fixture/build-guest.sh --print-dir)")
	flag.BoolVar(&o.json, "json", false, "print the results as JSON")
	flag.StringVar(&o.only, "only", "", "run one phase only: boot (raw vs banger create), workspace (copy-in) or pool (warm vs empty tap pool)")
	flag.Parse()
	if o.n < 1 || flag.NArg() > 0 || !slices.Contains([]string{"", "boot", "workspace", "pool"}, o.only) {
		flag.Usage()
		os.Exit(2)
	}
	os.Exit(run(o))
}

// run benchmarks, cleans up, checks for leaks and returns the exit code.
func run(o options) int {
	ctx, stop := withSignals()
	defer stop()

	b, err := newBench(o)
	if err != nil {
		logf("error: %v", err)
		return 1
	}
	rep, runErr := b.run(ctx)
	cleanErr := b.cleanup()
	leakErr := b.verifyNoLeaks()

	if runErr == nil {
		runErr = rep.print(os.Stdout, o.json)
	}
	code := 0
	if runErr != nil {
		logf("error: %v", runErr)
		code = 1
		if ctx.Err() != nil { // only a signal cancels it before stop
			code = 130
		}
	}
	if cleanErr != nil {
		logf("CLEANUP FAILED: %v", cleanErr)
		code = max(code, 1)
	}
	if leakErr != nil {
		logf("LEAK CHECK FAILED: %v", leakErr)
		code = max(code, 1)
	} else {
		logf("cleanup verified: no process mentions %s, the directory is removed, no namespace of the run remains", b.dir)
	}
	return code
}

// withSignals returns a context canceled by the first SIGINT/SIGTERM/SIGHUP.
// Later signals are caught too, so a second Ctrl-C cannot cut the cleanup short.
func withSignals() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		for s := range ch {
			if ctx.Err() == nil {
				logf("%v: stopping, then cleaning up", s)
				cancel()
			} else {
				logf("%v: still cleaning up, please wait", s)
			}
		}
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}
