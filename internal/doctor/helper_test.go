package doctor

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/privileged"
)

// TestRootHelperCheck runs the check against no policy, a policy for
// another uid, a helper that is not running, one that refuses this process
// (real SO_PEERCRED) and one that answers.
func TestRootHelperCheck(t *testing.T) {
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "root-helper.json")
	sock := filepath.Join(dir, "helper.sock")
	env := Env{UID: 1000, HelperPolicy: policyFile}
	ctx := context.Background()
	check := func(want Status, evidence string) {
		t.Helper()
		r := checkRootHelper(ctx, env)
		if r.Status != want || !strings.Contains(r.Evidence, evidence) {
			t.Fatalf("got %s %q (remedy %q), want %s with %q", r.Status, r.Evidence, r.Remedy, want, evidence)
		}
		if want != Pass && !strings.Contains(r.Remedy, "banger") {
			t.Fatalf("no remedy: %+v", r)
		}
	}
	if r := checkRootHelper(ctx, Env{UID: 0}); r.Status != Pass {
		t.Fatalf("as root: %+v", r)
	}
	check(Fail, "no root helper is installed")

	p := privileged.Policy{OwnerUID: 1001, Socket: sock, ManagedDirs: []string{dir}, Bridge: "bgtestdoc0",
		CIDR: netip.MustParsePrefix("10.78.0.0/24"), VMMBinaries: []string{"/usr/bin/qemu-system-x86_64"}}
	if err := p.Write(policyFile); err != nil {
		t.Fatal(err)
	}
	check(Fail, "installed for uid 1001")

	p.OwnerUID = 1000
	if err := p.Write(policyFile); err != nil {
		t.Fatal(err)
	}
	check(Fail, "not answering")

	// A real helper server on the socket. Its own policy decides whom it
	// serves: first uid 1000 (this process, root, is refused), then root.
	serve := func(owner int) func() {
		sp := p
		sp.OwnerUID = owner
		srv := &privileged.Server{Policy: sp, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		ln, err := srv.Listen()
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { srv.Serve(sctx, ln); close(done) }()
		return func() { cancel(); <-done }
	}
	stop := serve(1000)
	check(Fail, "refuses this user")
	stop()
	stop = serve(0)
	defer stop()
	check(Pass, "bangerd-root answers on "+sock)
}
