package bootinit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AgentPath is where banger puts its guest agent in the initramfs; the
// agent is copied from there to /run/banger/banger-agent in the new root.
const AgentPath = "/banger/banger-agent"

// putFile replaces root/path with data only when the content changed
// (stable mtimes, no needless writes to the overlay), through a temporary
// file renamed into place. A symlink at path is replaced by the file.
func putFile(root, path string, data []byte, perm os.FileMode) error {
	f := filepath.Join(root, path)
	if old, err := os.ReadFile(f); err == nil && bytes.Equal(old, data) {
		if st, err := os.Lstat(f); err == nil && st.Mode().IsRegular() {
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
		return err
	}
	tmp := f + ".banger-new"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, f); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// hostsFile is the image's /etc/hosts with exactly one 127.0.1.1 line, for name.
func hostsFile(old []byte, name string) []byte {
	var b bytes.Buffer
	for _, l := range strings.SplitAfter(string(old), "\n") {
		if l == "" || strings.HasPrefix(l, "127.0.1.1 ") || strings.HasPrefix(l, "127.0.1.1\t") {
			continue
		}
		b.WriteString(l)
		if !strings.HasSuffix(l, "\n") {
			b.WriteByte('\n')
		}
	}
	if b.Len() == 0 {
		b.WriteString("127.0.0.1\tlocalhost\n")
	}
	fmt.Fprintf(&b, "127.0.1.1\t%s\n", name)
	return b.Bytes()
}

// networkdFile is the systemd-networkd configuration for the NIC (matched
// by MAC when known, else by name eth0).
func networkdFile(c Config, mac string) []byte {
	var b bytes.Buffer
	b.WriteString("# Written at boot by banger-init from the kernel command line.\n[Match]\n")
	if mac != "" {
		fmt.Fprintf(&b, "MACAddress=%s\n", mac)
	} else {
		b.WriteString("Name=eth0\n")
	}
	b.WriteString("\n[Network]\n")
	if c.IP.IsValid() {
		fmt.Fprintf(&b, "Address=%s\n", c.IP)
		if c.Gateway.IsValid() {
			fmt.Fprintf(&b, "Gateway=%s\n", c.Gateway)
		}
	} else {
		b.WriteString("DHCP=ipv4\n")
	}
	if c.DNS.IsValid() {
		fmt.Fprintf(&b, "DNS=%s\n", c.DNS)
	}
	b.WriteString("LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
	return b.Bytes()
}

// agentUnit is the transient systemd unit that runs the agent from /run.
const agentUnit = `[Unit]
Description=banger guest agent
DefaultDependencies=no
After=systemd-modules-load.service
Before=sysinit.target

[Service]
ExecStart=/run/banger/banger-agent $BANGER_AGENT_ARGS
EnvironmentFile=-/run/banger/agent.env
Restart=always
RestartSec=200ms
`

// agentArgs are the agent's arguments for this boot.
func agentArgs(c Config) []string {
	if c.AgentVsock != 0 {
		return []string{"-vsock", fmt.Sprint(c.AgentVsock)}
	}
	return nil
}

// firstNIC returns the name and MAC of the first ethernet NIC backed by a
// device (not a bridge or veth made later inside the guest).
func firstNIC(sysClassNet string) (name, mac string) {
	ents, _ := os.ReadDir(sysClassNet)
	for _, e := range ents {
		d := filepath.Join(sysClassNet, e.Name())
		t, _ := os.ReadFile(filepath.Join(d, "type"))
		if strings.TrimSpace(string(t)) != "1" { // ARPHRD_ETHER
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "device")); err != nil {
			continue
		}
		a, _ := os.ReadFile(filepath.Join(d, "address"))
		return e.Name(), strings.TrimSpace(string(a))
	}
	return "", ""
}
