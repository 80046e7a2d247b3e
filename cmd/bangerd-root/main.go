// Command bangerd-root is banger's root helper: the only part of banger that
// runs as root once banger is installed as a system service. It serves a
// fixed allow-list of validated operations (bridge, taps, nftables, the DNS
// socket on port 53, signals to VMM processes) to the installed owner's
// bangerd over a Unix socket; see package internal/privileged.
//
// It is its own binary, not a banger subcommand, so that the process running
// as root contains only the helper's code (no CLI, RPC server, SQLite or SSH
// client), and it can be audited and hardened on its own.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"banger/internal/privileged"
)

func main() {
	policyFile := flag.String("policy", privileged.DefaultPolicyFile, "the helper's policy (written by `banger system install`)")
	flag.Parse()
	if err := run(*policyFile); err != nil {
		fmt.Fprintln(os.Stderr, "bangerd-root:", err)
		os.Exit(1)
	}
}

func run(policyFile string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root (it is the privileged half of banger; the daemon runs as the owner)")
	}
	p, err := privileged.LoadPolicy(policyFile)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv, err := privileged.NewHelper(p, log)
	if err != nil {
		return err
	}
	ln, err := srv.Listen()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = srv.Serve(ctx, ln)
	log.Info("root helper stopped")
	return err
}
