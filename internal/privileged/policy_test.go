package privileged

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	good := Policy{OwnerUID: 1000, ManagedDirs: []string{"/home/u/.local/state/banger"}, Bridge: "banger0",
		CIDR: mustPrefix("172.31.0.0/24"), VMMBinaries: []string{"/usr/bin/qemu-system-x86_64"}}
	f := filepath.Join(dir, "p.json")
	if err := good.Write(f); err != nil {
		t.Fatal(err)
	}
	got, err := LoadPolicy(f)
	if err != nil {
		t.Fatal(err)
	}
	if got.SocketPath() != DefaultSocket || got.tapPrefix() != "bgtap" || got.CIDR != good.CIDR {
		t.Fatalf("loaded %+v", got)
	}

	cases := []struct {
		name, json, want string
	}{
		{"unknown key", `{"owner_uid":1,"allow_all":true}`, `unknown field "allow_all"`},
		{"relative managed dir", `{"owner_uid":1,"managed_dirs":["state"],"bridge":"b0","cidr":"10.9.0.0/24","vmm_binaries":["/q"]}`, `"state" must be an absolute`},
		{"root as managed dir", `{"owner_uid":1,"managed_dirs":["/"],"bridge":"b0","cidr":"10.9.0.0/24","vmm_binaries":["/q"]}`, "other than /"},
		{"unclean managed dir", `{"owner_uid":1,"managed_dirs":["/a/../etc"],"bridge":"b0","cidr":"10.9.0.0/24","vmm_binaries":["/q"]}`, "clean path"},
		{"no VMM", `{"owner_uid":1,"managed_dirs":["/a"],"bridge":"b0","cidr":"10.9.0.0/24"}`, "vmm_binaries: empty"},
		{"negative uid", `{"owner_uid":-1,"managed_dirs":["/a"],"bridge":"b0","cidr":"10.9.0.0/24","vmm_binaries":["/q"]}`, "owner_uid -1"},
		{"bad bridge", `{"owner_uid":1,"managed_dirs":["/a"],"bridge":"b 0","cidr":"10.9.0.0/24","vmm_binaries":["/q"]}`, "invalid bridge name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, "bad.json")
			if err := os.WriteFile(f, []byte(tc.json), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadPolicy(f)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
	if _, err := LoadPolicy(filepath.Join(dir, "missing.json")); err == nil || !strings.Contains(err.Error(), "banger system install") {
		t.Fatalf("missing policy: %v", err)
	}
}
