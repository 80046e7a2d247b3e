package sysinstall

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"banger/internal/privileged"
)

// stagingRoot returns an empty staging root with some unrelated files in
// the directories install writes to, and a source directory of stand-in
// binaries. Options use them with owner "nobody".
func stagingRoot(t *testing.T) Options {
	t.Helper()
	root := t.TempDir()
	for p, data := range map[string]string{
		"/usr/local/bin/other-tool":       "#!/bin/sh\n",
		"/etc/systemd/system/foo.service": "[Service]\nExecStart=/bin/true\n",
		"/etc/banger/config.toml":         "[network]\nbridge = \"bgstage0\"\ncidr = \"10.77.0.0/24\"\n",
	} {
		writeT(t, filepath.Join(root, p), data, 0o644)
	}
	src := t.TempDir()
	for _, b := range Binaries {
		writeT(t, filepath.Join(src, b), "binary "+b+"\n", 0o755)
	}
	return Options{Root: root, Owner: "nobody", SourceDir: src, Out: &bytes.Buffer{},
		SystemdRunning: func() bool { return true },
		Systemctl: func(context.Context, ...string) error {
			t.Error("systemctl must not run for a staging root")
			return nil
		}}
}

func writeT(t *testing.T, p, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// snapshot lists every path below root with its type, mode and content hash.
func snapshot(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		line := strings.TrimPrefix(p, root) + " " + info.Mode().String()
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			line += " " + hex.EncodeToString(s[:8])
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestInstallThenUninstallLeavesRootAsBefore(t *testing.T) {
	o := stagingRoot(t)
	before := snapshot(t, o.Root)
	m, err := Install(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range Binaries {
		got, err := os.ReadFile(filepath.Join(o.Root, "usr/local/bin", b))
		if err != nil || string(got) != "binary "+b+"\n" {
			t.Errorf("installed %s: %q %v", b, got, err)
		}
	}
	if m.Owner != "nobody" || m.OwnerUID != 65534 || m.Enabled {
		t.Errorf("metadata %+v", m)
	}
	p, err := privileged.LoadPolicy(filepath.Join(o.Root, privileged.DefaultPolicyFile))
	if err != nil {
		t.Fatal(err)
	}
	if p.OwnerUID != 65534 || p.Bridge != "bgstage0" || p.CIDR.String() != "10.77.0.0/24" ||
		!slices.Equal(p.ManagedDirs, []string{"/var/lib/banger", "/var/cache/banger", "/run/banger"}) {
		t.Errorf("policy %+v", p)
	}
	qemu, _ := exec.LookPath("qemu-system-x86_64")
	qemu, _ = filepath.EvalSymlinks(qemu)
	if qemu != "" && !slices.Contains(p.VMMBinaries, qemu) {
		t.Errorf("policy VMM binaries %v lack %s", p.VMMBinaries, qemu)
	}
	if got, err := ReadMetadata(o.Root); err != nil || len(got.Files) != len(Binaries)+3 {
		t.Fatalf("metadata files: %+v %v", got.Files, err)
	}
	st, err := GetStatus(context.Background(), o)
	if err != nil || !st.Installed || st.Files["/usr/local/bin/bangerd"] != "ok" || !strings.Contains(st.Helper, "unreachable") {
		t.Errorf("status %+v %v", st, err)
	}

	// A second install is refused and changes nothing.
	mid := snapshot(t, o.Root)
	if _, err := Install(context.Background(), o); err == nil || !strings.Contains(err.Error(), "already installed") {
		t.Fatalf("second install: %v", err)
	}
	if got := snapshot(t, o.Root); !slices.Equal(got, mid) {
		t.Fatalf("refused install changed the root")
	}

	r, err := Uninstall(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kept) != 0 {
		t.Errorf("kept %v", r.Kept)
	}
	if after := snapshot(t, o.Root); !slices.Equal(after, before) {
		t.Fatalf("root differs after uninstall:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := Uninstall(context.Background(), o); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("second uninstall: %v", err)
	}
}

func TestUninstallKeepsChangedFilesAndPurges(t *testing.T) {
	o := stagingRoot(t)
	if _, err := Install(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	edited := filepath.Join(o.Root, "etc/systemd/system", DaemonUnit)
	writeT(t, edited, "edited by the admin\n", 0o644)
	state := filepath.Join(o.Root, "var/lib/banger/vms/x/root.img")
	writeT(t, state, "disk", 0o600)

	r, err := Uninstall(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(r.Kept, edited+" (changed since install)") {
		t.Errorf("kept %v, want the edited unit", r.Kept)
	}
	if _, err := os.Stat(edited); err != nil {
		t.Errorf("edited unit removed: %v", err)
	}
	if _, err := os.Stat(state); err != nil {
		t.Errorf("state removed without --purge: %v", err)
	}

	// Reinstall (the edited unit blocks it until moved away), then purge.
	if _, err := Install(context.Background(), o); err == nil || !strings.Contains(err.Error(), edited) {
		t.Fatalf("install over an edited unit: %v", err)
	}
	os.Remove(edited)
	if _, err := Install(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	o.Purge = true
	r, err = Uninstall(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(r.Purged, filepath.Join(o.Root, "var/lib/banger")) {
		t.Errorf("purged %v", r.Purged)
	}
	if _, err := os.Stat(filepath.Join(o.Root, "var/lib/banger")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state dir after purge: %v", err)
	}
}

func TestInstallRefusesAndChangesNothing(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, o *Options)
		want  string
	}{
		{"no owner", func(t *testing.T, o *Options) { o.Owner = "" }, "--owner USER is required"},
		{"unknown owner", func(t *testing.T, o *Options) { o.Owner = "bgtest-no-such-user" }, "unknown user"},
		{"root owner", func(t *testing.T, o *Options) { o.Owner = "root" }, "ordinary user"},
		{"relative root", func(t *testing.T, o *Options) { o.Root = "stage" }, "absolute"},
		{"missing helper binary", func(t *testing.T, o *Options) { os.Remove(filepath.Join(o.SourceDir, "bangerd-root")) },
			"bangerd-root not found"},
		{"a file that is not ours", func(t *testing.T, o *Options) {
			writeT(t, filepath.Join(o.Root, "usr/local/bin/bangerd"), "someone else's", 0o755)
		}, "not overwriting files banger did not install"},
		{"bad config", func(t *testing.T, o *Options) {
			writeT(t, filepath.Join(o.Root, "etc/banger/config.toml"), "[network]\nbridgee = 1\n", 0o644)
		}, "unknown key network.bridgee"},
		{"no VMM", func(t *testing.T, o *Options) {
			writeT(t, filepath.Join(o.Root, "etc/banger/config.toml"), "[qemu]\nbinary = \"/nonexistent/qemu\"\n[firecracker]\nbinary = \"/nonexistent/fc\"\n", 0o644)
		}, "no VMM binary found"},
		// Fails half way (after the first binaries are written): undone.
		{"unreadable source half way", func(t *testing.T, o *Options) {
			p := filepath.Join(o.SourceDir, "banger-agent")
			os.Remove(p)
			os.Mkdir(p, 0o755)
		}, "is a directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := stagingRoot(t)
			tc.setup(t, &o)
			var before []string
			if filepath.IsAbs(o.Root) {
				before = snapshot(t, o.Root)
			}
			_, err := Install(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
			if before != nil {
				if after := snapshot(t, o.Root); !slices.Equal(after, before) {
					t.Fatalf("refused install changed the root:\nbefore %v\nafter  %v", before, after)
				}
			}
		})
	}
}
