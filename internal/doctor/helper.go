package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"

	"banger/internal/privileged"
)

// checkRootHelper: a daemon not running as root needs the root helper
// (bangerd-root) installed for this user and answering on its socket.
func checkRootHelper(ctx context.Context, env Env) Result {
	if env.UID == 0 {
		return pass("running as root: the daemon does privileged work itself (no helper needed)")
	}
	install := "sudo banger system install --owner $USER (or run bangerd as root)"
	policyFile := env.HelperPolicy
	if policyFile == "" {
		policyFile = privileged.DefaultPolicyFile
	}
	p, err := privileged.LoadPolicy(policyFile)
	if errors.Is(err, os.ErrNotExist) {
		return fail(fmt.Sprintf("not running as root (uid %d) and no root helper is installed (%s missing)", env.UID, policyFile), install)
	}
	if err != nil {
		return fail(err.Error(), "sudo banger system uninstall && "+install)
	}
	if p.OwnerUID != env.UID {
		return fail(fmt.Sprintf("the root helper is installed for uid %d, not for this user (uid %d)", p.OwnerUID, env.UID),
			"run banger as the installed owner, or reinstall: sudo banger system uninstall && "+install)
	}
	c := &privileged.Client{Socket: p.SocketPath()}
	if err := c.Ping(ctx); err != nil {
		if errors.Is(err, privileged.ErrRefused) {
			return fail("the root helper refuses this user: "+err.Error(), "sudo banger system uninstall && "+install)
		}
		return fail("the root helper is installed but not answering: "+err.Error(),
			"sudo systemctl start bangerd-root (without systemd: sudo bangerd-root -policy "+policyFile+")")
	}
	return pass(fmt.Sprintf("bangerd-root answers on %s (protocol %d) for uid %d", p.SocketPath(), privileged.ProtocolVersion, env.UID))
}
