package workspace

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFileSync(t *testing.T) {
	testEnv(t)
	ctx := testCtx(t)
	home := t.TempDir()
	writeFile(t, filepath.Join(home, ".gitconfig"), "[user]\n\tname = X\n", 0o644)
	writeFile(t, filepath.Join(home, ".ssh", "id_ed25519"), "PRIVATE\n", 0o600)
	writeFile(t, filepath.Join(home, ".ssh", "config"), "Host *\n", 0o644)
	writeFile(t, filepath.Join(home, ".ssh", "sub dir", "tool"), "#!/bin/sh\n", 0o755)
	os.Chmod(filepath.Join(home, ".ssh"), 0o700)
	symlink(t, "config", filepath.Join(home, ".ssh", "config.link"))
	writeFile(t, filepath.Join(home, "dotfiles", "vimrc"), "set nu\n", 0o640)
	symlink(t, filepath.Join(home, "dotfiles", "vimrc"), filepath.Join(home, ".vimrc"))

	guestHome := filepath.Join(t.TempDir(), "root")
	if err := os.MkdirAll(guestHome, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(guestHome, ".ssh", "authorized_keys"), "keep me\n", 0o600)
	entries := []SyncEntry{
		{Host: "~/.gitconfig"},
		{Host: "~/.ssh", Guest: "~/.ssh"},
		{Host: "~/.vimrc", Guest: ".vimrc"},
		{Host: "~/missing"},
		{Host: filepath.Join(home, ".gitconfig"), Guest: guestHome + "/deep/er/gc"},
	}
	var sent int64
	warnings, err := FileSync(ctx, Local{}, entries, SyncOptions{HostHome: home, GuestHome: guestHome, Progress: func(p Progress) { sent = p.Bytes }})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "~/missing does not exist") {
		t.Fatalf("warnings %q", warnings)
	}
	if sent == 0 {
		t.Error("no progress reported")
	}
	for p, want := range map[string]os.FileMode{
		".gitconfig":           0o644,
		".ssh":                 0o700 | os.ModeDir,
		".ssh/id_ed25519":      0o600,
		".ssh/config":          0o644,
		".ssh/sub dir/tool":    0o755,
		".ssh/config.link":     os.ModeSymlink | 0o777,
		".vimrc":               0o640,
		"deep/er/gc":           0o644,
		".ssh/authorized_keys": 0o600,
	} {
		fi, err := os.Lstat(filepath.Join(guestHome, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(guestHome, ".vimrc")); string(b) != "set nu\n" {
		t.Errorf(".vimrc = %q (the top-level symlink should be followed)", b)
	}
	if target, _ := os.Readlink(filepath.Join(guestHome, ".ssh", "config.link")); target != "config" {
		t.Errorf("config.link -> %q", target)
	}

	for _, bad := range []SyncEntry{
		{Host: "~/.gitconfig", Guest: "/etc/gitconfig"},
		{Host: "~/.gitconfig", Guest: "~/../etc/x"},
		{Host: "~/.ssh", Guest: "~"},
		{Host: "relative/path", Guest: "x"},
		{Host: filepath.Join(home, ".gitconfig")},
		{Guest: "x"},
	} {
		if _, err := FileSync(ctx, Local{}, []SyncEntry{bad}, SyncOptions{HostHome: home, GuestHome: guestHome}); err == nil {
			t.Errorf("FileSync(%+v) accepted", bad)
		}
	}
	if w, err := FileSync(ctx, Local{}, []SyncEntry{{Host: "~/nope"}}, SyncOptions{HostHome: home, GuestHome: guestHome}); err != nil || len(w) != 1 {
		t.Errorf("only missing entries: %q %v", w, err)
	}
}
