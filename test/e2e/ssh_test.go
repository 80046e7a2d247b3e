package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSSHConfigAndHostKeys: `banger ssh-config --install` lets the system
// OpenSSH client reach NAME.vm, --uninstall restores ~/.ssh/config byte for
// byte, and a guest whose host key changed is refused with a clear message.
func TestSSHConfigAndHostKeys(t *testing.T) {
	t.Parallel()
	home := filepath.Join(testRoot, "home-"+t.Name())
	e := newEnv(t, envOpts{vars: []string{"HOME=" + home}})
	e.registerImage()
	e.must("vm", "create", "--name", "reach")

	userConfig := filepath.Join(home, ".ssh", "config")
	orig := "# the user's own config\nHost example.com\n\tUser someone\n"
	if err := os.MkdirAll(filepath.Dir(userConfig), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(userConfig, []byte(orig), 0o600); err != nil {
		t.Fatal(err)
	}
	e.must("ssh-config", "--install")
	e.must("ssh-config", "--install") // idempotent
	if b, _ := os.ReadFile(userConfig); strings.Count(string(b), "Include") != 1 || !strings.HasSuffix(string(b), orig) {
		t.Fatalf("~/.ssh/config after two installs:\n%s", b)
	}
	// OpenSSH reads ~/.ssh/config from the passwd entry, not $HOME: name
	// the isolated file explicitly; everything else is the system client.
	ssh := exec.Command("ip", "netns", "exec", e.ns, "ssh", "-F", userConfig, "-o", "BatchMode=yes", "reach.vm", "cat", "/etc/hostname")
	ssh.Env = append(os.Environ(), e.vars...)
	if out, err := ssh.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "reach" {
		t.Fatalf("system ssh reach.vm: %v\n%s", err, out)
	}
	e.must("ssh-config", "--uninstall")
	if b, _ := os.ReadFile(userConfig); string(b) != orig {
		t.Fatalf("~/.ssh/config after uninstall:\n%q\nwant\n%q", b, orig)
	}

	// A new host key in the guest (as if it were replaced) must be refused.
	e.ssh("reach", "sh", "-c", "rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub && systemctl restart ssh")
	r := e.run("vm", "ssh", "reach", "--", "true")
	if r.code == 0 {
		t.Fatal("vm ssh to a guest with a changed host key succeeded")
	}
	assertContains(t, "vm ssh with a changed host key", r.stderr, "host key changed for vm reach")
}
