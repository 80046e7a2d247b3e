package sshconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func setup(t *testing.T) (cfg, inc string) {
	dir := t.TempDir()
	return filepath.Join(dir, "home/.ssh/config"), filepath.Join(dir, "banger/ssh_config")
}

func TestInstallUninstallRestoresByteForByte(t *testing.T) {
	cfg, inc := setup(t)
	orig := "Host example\n\tUser me\n\n# no trailing newline"
	os.MkdirAll(filepath.Dir(cfg), 0o700)
	if err := os.WriteFile(cfg, []byte(orig), 0o640); err != nil {
		t.Fatal(err)
	}
	content := Render(Files{Banger: "/usr/bin/banger", KeyFile: "/k/id ed25519", KnownHosts: "/k/known_hosts"})
	for i := 0; i < 2; i++ {
		changed, err := Install(cfg, inc, content)
		if err != nil {
			t.Fatal(err)
		}
		if changed != (i == 0) {
			t.Fatalf("install #%d: changed = %v", i+1, changed)
		}
	}
	b, _ := os.ReadFile(cfg)
	if !strings.HasPrefix(string(b), beginMarker+"Include "+inc+"\n"+endMarker) || !strings.HasSuffix(string(b), orig) {
		t.Fatalf("installed config:\n%s", b)
	}
	if st, _ := os.Stat(cfg); st.Mode().Perm() != 0o640 {
		t.Fatalf("install changed the mode to %v", st.Mode().Perm())
	}
	if got, _ := os.ReadFile(inc); string(got) != content || !strings.Contains(content, `IdentityFile "/k/id ed25519"`) {
		t.Fatalf("include file:\n%s", got)
	}
	changed, err := Uninstall(cfg, inc)
	if err != nil || !changed {
		t.Fatalf("uninstall: %v %v", changed, err)
	}
	if b, _ := os.ReadFile(cfg); string(b) != orig {
		t.Fatalf("after uninstall:\n%q\nwant\n%q", b, orig)
	}
	if _, err := os.Stat(inc); !os.IsNotExist(err) {
		t.Fatalf("include file still there: %v", err)
	}
	if changed, err := Uninstall(cfg, inc); err != nil || changed {
		t.Fatalf("second uninstall: %v %v", changed, err)
	}
}

func TestInstallCreatesAndUninstallRemoves(t *testing.T) {
	cfg, inc := setup(t)
	if _, err := Install(cfg, inc, "x"); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Dir(cfg)); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("~/.ssh: %v %v", st, err)
	}
	if _, err := Install(cfg, inc, "x"); err != nil { // still "created" after a reinstall
		t.Fatal(err)
	}
	if _, err := Uninstall(cfg, inc); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfg); !os.IsNotExist(err) {
		t.Fatalf("config created by install survives uninstall: %v", err)
	}
}

func TestUninstallKeepsWhatTheUserAddedToACreatedFile(t *testing.T) {
	cfg, inc := setup(t)
	Install(cfg, inc, "x")
	f, _ := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("Host mine\n")
	f.Close()
	Uninstall(cfg, inc)
	if b, err := os.ReadFile(cfg); err != nil || string(b) != "Host mine\n" {
		t.Fatalf("after uninstall: %q %v", b, err)
	}
}

func TestSymlinkedConfigStaysALink(t *testing.T) {
	cfg, inc := setup(t)
	real := filepath.Join(t.TempDir(), "dotfiles-ssh-config")
	os.WriteFile(real, []byte("Host a\n"), 0o600)
	os.MkdirAll(filepath.Dir(cfg), 0o700)
	os.Symlink(real, cfg)
	Install(cfg, inc, "x")
	if st, _ := os.Lstat(cfg); st.Mode()&os.ModeSymlink == 0 {
		t.Fatal("install replaced the symlink with a file")
	}
	if b, _ := os.ReadFile(real); !strings.Contains(string(b), "Include") {
		t.Fatalf("link target not updated: %s", b)
	}
	Uninstall(cfg, inc)
	if b, _ := os.ReadFile(real); string(b) != "Host a\n" {
		t.Fatalf("link target after uninstall: %q", b)
	}
}

func TestRefusesAMovedBlock(t *testing.T) {
	cfg, inc := setup(t)
	os.MkdirAll(filepath.Dir(cfg), 0o700)
	moved := "Host a\n" + beginMarker + "Include x\n" + endMarker
	os.WriteFile(cfg, []byte(moved), 0o600)
	if _, err := Install(cfg, inc, "x"); err == nil || !strings.Contains(err.Error(), "not at the top") {
		t.Fatalf("install over a moved block: %v", err)
	}
	if _, err := Uninstall(cfg, inc); err == nil {
		t.Fatal("uninstall of a moved block succeeded")
	}
	if b, _ := os.ReadFile(cfg); string(b) != moved {
		t.Fatal("a refused call changed the file")
	}
}
