package resolved

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// systemd-resolved cannot run on a test machine without systemd as PID 1, so
// these tests drive a stand-in resolvectl: a script that logs its argv and
// keeps the link's domains in a file, answering `resolvectl domain LINK` the
// way the real one prints it. FAIL_ON=<verb> makes that verb fail.
const fakeResolvectl = `#!/bin/sh
dir=$(dirname "$0")
echo "$*" >>"$dir/calls"
[ "$1" = "$FAIL_ON" ] && { echo "Failed to set $1: injected" >&2; exit 1; }
case "$1 $#" in
"domain 2") echo "Link 7 ($2): $(cat "$dir/domains" 2>/dev/null)" ;;
"domain 3") echo "$3" >"$dir/domains" ;;
"revert 2") rm -f "$dir/domains" ;;
esac
`

func fakeHost(t *testing.T) (Host, string) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "resolvectl")
	if err := os.WriteFile(bin, []byte(fakeResolvectl), 0o755); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	return Host{Resolvectl: bin, RunDir: run}, dir
}

func calls(t *testing.T, dir string) []string {
	b, _ := os.ReadFile(filepath.Join(dir, "calls"))
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " ", "_"))
}

func TestRouteAndUnroute(t *testing.T) {
	h, dir := fakeHost(t)
	ctx := context.Background()
	gw := netip.MustParseAddr("10.213.0.1")
	if err := h.Route(ctx, "banger0", gw); err != nil {
		t.Fatal(err)
	}
	if ok, err := h.Routed(ctx, "banger0"); err != nil || !ok {
		t.Fatalf("Routed after Route = %v, %v", ok, err)
	}
	if err := h.Unroute(ctx, "banger0"); err != nil {
		t.Fatal(err)
	}
	if ok, err := h.Routed(ctx, "banger0"); err != nil || ok {
		t.Fatalf("Routed after Unroute = %v, %v", ok, err)
	}
	want := []string{"dns_banger0_10.213.0.1", "domain_banger0_~vm", "domain_banger0", "revert_banger0", "domain_banger0"}
	if got := calls(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("resolvectl calls:\n got %v\nwant %v", got, want)
	}
}

func TestRouteFailureReverts(t *testing.T) {
	h, dir := fakeHost(t)
	t.Setenv("FAIL_ON", "domain")
	err := h.Route(context.Background(), "banger0", netip.MustParseAddr("10.213.0.1"))
	if err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("Route with a failing `domain` = %v", err)
	}
	want := []string{"dns_banger0_10.213.0.1", "domain_banger0_~vm", "revert_banger0"}
	if got := calls(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("resolvectl calls:\n got %v\nwant %v", got, want)
	}
}

func TestNotActive(t *testing.T) {
	h, dir := fakeHost(t)
	h.RunDir = filepath.Join(dir, "absent")
	ctx := context.Background()
	if err := h.Route(ctx, "banger0", netip.MustParseAddr("10.213.0.1")); !errors.Is(err, ErrNotActive) {
		t.Fatalf("Route without systemd-resolved = %v, want ErrNotActive", err)
	}
	if err := h.Unroute(ctx, "banger0"); err != nil {
		t.Fatalf("Unroute without systemd-resolved = %v, want nil", err)
	}
	if got := calls(t, dir); len(got) != 0 {
		t.Fatalf("resolvectl was run without systemd-resolved: %v", got)
	}
	// systemd-resolved running but no resolvectl on $PATH.
	h.RunDir = filepath.Join(dir, "run")
	h.Resolvectl = ""
	t.Setenv("PATH", t.TempDir())
	if err := h.Active(); err == nil || !strings.Contains(err.Error(), "resolvectl is missing") {
		t.Fatalf("Active without resolvectl = %v", err)
	}
}
