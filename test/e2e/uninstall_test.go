package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/sysinstall"
)

// TestUninstallCleansUp: `banger system uninstall` (of an install staged
// under --root whose daemon socket is this scenario's daemon) first has the
// running daemon clean up the host: refused, changing nothing, while a VM
// runs; once none does, the daemon stops and its pool taps, bridge and
// nftables tables are gone with the install metadata.
func TestUninstallCleansUp(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.registerImage()
	e.must("vm", "create", "--name", "kept")

	root := filepath.Join(e.home, "staged-install")
	meta := filepath.Join(root, sysinstall.MetaFile)
	b, _ := json.Marshal(sysinstall.Metadata{DaemonSocket: "/run/banger/bangerd.sock"})
	for _, err := range []error{
		os.MkdirAll(filepath.Dir(meta), 0o755),
		os.WriteFile(meta, b, 0o644),
		os.MkdirAll(filepath.Join(root, "run/banger"), 0o755),
		os.Symlink(e.socket(), filepath.Join(root, "run/banger/bangerd.sock")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}

	r := e.run("system", "uninstall", "--root", root)
	if r.code == 0 || !strings.Contains(r.stderr, "uninstall refused") || !strings.Contains(r.stderr, "running") {
		t.Fatalf("uninstall with a VM running: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(meta); err != nil {
		t.Fatalf("a refused uninstall removed the metadata: %v", err)
	}
	if v := e.show("kept"); v.State != "running" {
		t.Fatalf("a refused uninstall changed the VM: %+v", v)
	}

	e.must("vm", "delete", "--force", "kept")
	pid := e.daemonPID()
	e.must("system", "uninstall", "--root", root)
	if !waitGone(pid, 30*time.Second) {
		t.Fatal("the daemon did not stop")
	}
	if links := append(e.links("bgtap"), e.links("banger0")...); len(links) != 0 {
		t.Fatalf("uninstall left links: %v", links)
	}
	if tables := e.nft("list", "tables"); strings.Contains(tables, "banger\n") {
		t.Fatalf("uninstall left nftables tables:\n%s", tables)
	}
	if _, err := os.Stat(meta); !os.IsNotExist(err) {
		t.Fatalf("install metadata after uninstall: %v", err)
	}
}
