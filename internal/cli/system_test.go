package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/rpc"
	"banger/internal/sysinstall"
)

// stagedInstall writes the install metadata of an install staged under a
// temporary root, its daemon socket at /run/banger/bangerd.sock.
func stagedInstall(t *testing.T) (root, sock string) {
	t.Helper()
	root = t.TempDir()
	meta := filepath.Join(root, sysinstall.MetaFile)
	if err := os.MkdirAll(filepath.Dir(meta), 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sysinstall.Metadata{DaemonSocket: "/run/banger/bangerd.sock"})
	if err := os.WriteFile(meta, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(root, "run/banger/bangerd.sock")
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	return root, sock
}

// fakeDaemon answers daemon.stop on sock with reply (nil: success) and
// records the parameters it got.
func fakeDaemon(t *testing.T, sock string, reply error) *[]api.DaemonStopParams {
	t.Helper()
	got := &[]api.DaemonStopParams{}
	srv := rpc.NewServer(slog.New(slog.DiscardHandler))
	srv.Handle(api.MethodDaemonStop, func(_ context.Context, raw json.RawMessage, _ *rpc.Stream) (any, error) {
		var p api.DaemonStopParams
		json.Unmarshal(raw, &p)
		*got = append(*got, p)
		return struct{}{}, reply
	})
	ln, err := rpc.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return got
}

// Uninstall first has the installed daemon remove its pool taps, tables and
// bridge (daemon stop --cleanup); a refusal (VMs running) stops the
// uninstall; a daemon that does not answer is reported and skipped.
func TestUninstallCleansUpThroughTheDaemon(t *testing.T) {
	ctx := context.Background()
	var errb bytes.Buffer
	a := &app{stdout: &bytes.Buffer{}, stderr: &errb}

	root, sock := stagedInstall(t)
	if err := a.cleanupInstalledDaemon(ctx, root); err != nil || !strings.Contains(errb.String(), "does not answer") {
		t.Fatalf("no daemon: err %v, stderr %q", err, errb.String())
	}

	got := fakeDaemon(t, sock, nil)
	if err := a.cleanupInstalledDaemon(ctx, root); err != nil {
		t.Fatal(err)
	}
	if len(*got) != 1 || !(*got)[0].Cleanup {
		t.Fatalf("daemon.stop calls: %+v, want one with cleanup", *got)
	}

	root2, sock2 := stagedInstall(t)
	fakeDaemon(t, sock2, rpc.Errorf(rpc.CodeFailedPrecondition, "1 VM(s) running; stop or delete them before `banger daemon stop --cleanup`"))
	err := a.cleanupInstalledDaemon(ctx, root2)
	if err == nil || !strings.Contains(err.Error(), "uninstall refused") || !strings.Contains(err.Error(), "VM(s) running") {
		t.Fatalf("with a VM running: %v", err)
	}
}
