// Package resolved routes the `vm` DNS domain to banger's DNS server on hosts
// whose resolver is systemd-resolved, the way libvirt's recipe does for its
// bridge: the bridge link gets banger's DNS server (the bridge address, port
// 53) and the routing-only domain `~vm`, so `NAME.vm` resolves for every
// program on the host while all other names keep their usual servers.
//
// The settings are per link and runtime only: they vanish with the bridge
// and with a reboot, are set again on every daemon start and are reverted by
// `banger daemon stop --cleanup`. resolvectl is run with argv; nothing is
// written to /etc.
//
// systemd-resolved only consults links that are up with a carrier, so the
// route is in effect while at least one VM runs, which is exactly when
// NAME.vm has answers.
package resolved

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// Domain is the routing-only domain set on the bridge.
const Domain = "~vm"

// Host describes where to find systemd-resolved. The zero value is the
// real host; tests point Resolvectl and RunDir elsewhere.
type Host struct {
	// Resolvectl is the resolvectl binary ("" finds it on $PATH).
	Resolvectl string
	// RunDir is systemd-resolved's runtime directory ("" means
	// /run/systemd/resolve); it exists only while the service runs.
	RunDir string
}

func (h Host) runDir() string {
	if h.RunDir == "" {
		return "/run/systemd/resolve"
	}
	return h.RunDir
}

// ErrNotActive is returned when the host's resolver is not systemd-resolved.
var ErrNotActive = errors.New("systemd-resolved is not running")

// Active reports whether systemd-resolved runs on this host and resolvectl
// is available; the error says which is missing.
func (h Host) Active() error {
	if _, err := os.Stat(h.runDir()); err != nil {
		return fmt.Errorf("%w (no %s)", ErrNotActive, h.runDir())
	}
	if _, err := h.bin(); err != nil {
		return fmt.Errorf("systemd-resolved runs but resolvectl is missing: %w", err)
	}
	return nil
}

func (h Host) bin() (string, error) {
	if h.Resolvectl != "" {
		return h.Resolvectl, nil
	}
	return exec.LookPath("resolvectl")
}

func (h Host) run(ctx context.Context, args ...string) (string, error) {
	bin, err := h.bin()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("resolvectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Route points the vm domain at server (the bridge address) on link bridge.
// It returns ErrNotActive (wrapped) when the host does not run
// systemd-resolved; nothing is changed then.
func (h Host) Route(ctx context.Context, bridge string, server netip.Addr) error {
	if err := h.Active(); err != nil {
		return err
	}
	if _, err := h.run(ctx, "dns", bridge, server.String()); err != nil {
		return err
	}
	if _, err := h.run(ctx, "domain", bridge, Domain); err != nil {
		_, _ = h.run(ctx, "revert", bridge)
		return err
	}
	return nil
}

// Unroute drops every per-link setting of bridge (resolvectl revert). Not
// running systemd-resolved is not an error: there is nothing to undo.
func (h Host) Unroute(ctx context.Context, bridge string) error {
	if h.Active() != nil {
		return nil
	}
	_, err := h.run(ctx, "revert", bridge)
	return err
}

// Routed reports whether link bridge currently carries the vm routing
// domain.
func (h Host) Routed(ctx context.Context, bridge string) (bool, error) {
	if err := h.Active(); err != nil {
		return false, err
	}
	out, err := h.run(ctx, "domain", bridge)
	if err != nil {
		return false, err
	}
	// "Link 5 (banger0): ~vm"
	_, doms, _ := strings.Cut(out, ":")
	for _, d := range strings.Fields(doms) {
		if d == Domain {
			return true, nil
		}
	}
	return false, nil
}
