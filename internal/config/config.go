// Package config loads config.toml. Every key is optional; unknown keys are
// rejected with their name so a typo never silently does nothing.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"banger/internal/disk"
)

// Config is the daemon's configuration.
type Config struct {
	// VMM selects the driver: "qemu", "firecracker" or "auto".
	VMM      string `toml:"vmm"`
	LogLevel string `toml:"log_level"`

	QEMU struct {
		Binary string `toml:"binary"`
		// Accel: "auto" (KVM when a probe boots, else TCG), "kvm" or "tcg".
		Accel string `toml:"accel"`
	} `toml:"qemu"`

	Firecracker struct {
		Binary string `toml:"binary"`
		Jailer string `toml:"jailer"`
	} `toml:"firecracker"`

	Disk struct {
		// Backend for root disks: auto | qcow2 | reflink | dm | copy.
		Backend string `toml:"backend"`
	} `toml:"disk"`

	VM struct {
		VCPU     int    `toml:"vcpu"`
		Memory   string `toml:"memory"`    // e.g. "1GiB"
		WorkSize string `toml:"work_size"` // e.g. "4GiB"
		// ReadyTimeout bounds the wait for the guest to answer SSH, e.g. "120s".
		ReadyTimeout string `toml:"ready_timeout"`
	} `toml:"vm"`

	Network struct {
		Bridge string `toml:"bridge"`
		CIDR   string `toml:"cidr"`
		DNS    string `toml:"dns"` // resolver address given to guests
		// GuestToGuest lets guests reach each other (isolated by default).
		GuestToGuest bool `toml:"guest_to_guest"`
		// DNSListen is the host-side address of the daemon's NAME.vm DNS
		// server ("" turns the server off); guests use the bridge address.
		DNSListen string `toml:"dns_listen"`
		// DNSUpstreams are where other queries go ("IP" or "IP:port");
		// empty: the nameservers of /etc/resolv.conf.
		DNSUpstreams []string `toml:"dns_upstreams"`
		// TapPool is how many bridge-attached taps the daemon keeps ready
		// so a VM start renames one instead of creating it (0: no pool).
		TapPool int `toml:"tap_pool"`
	} `toml:"network"`

	Image struct {
		// Kernel and Initrd boot images pulled from a registry (they have
		// none of their own): absolute paths of a vmlinux/bzImage and of
		// an initramfs. Unset (the default), pulled images boot
		// DefaultKernel from banger's kernel store.
		Kernel string `toml:"kernel"`
		Initrd string `toml:"initrd"`
		// DefaultKernel is the store kernel pulled images boot ("" means
		// debian-cloud, which an image pull fetches when missing).
		DefaultKernel string `toml:"default_kernel"`
		// CatalogURL replaces the image catalog compiled into banger
		// (http:// or https:// URL of a catalog JSON).
		CatalogURL string `toml:"catalog_url"`
	} `toml:"image"`

	Kernel struct {
		// CatalogURL replaces the kernel bundle catalog compiled into
		// banger (http:// or https:// URL of a catalog JSON).
		CatalogURL string `toml:"catalog_url"`
	} `toml:"kernel"`

	// FileSync copies host files into each new VM's /root after it boots
	// ([[file_sync]] tables).
	FileSync []SyncEntry `toml:"file_sync"`
}

// SyncEntry is one [[file_sync]] table: a host file or directory ("~/..."
// or absolute) and where it goes under the guest's /root ("~/...", relative,
// or absolute under /root; empty: the same place relative to the home).
type SyncEntry struct {
	Host  string `toml:"host"`
	Guest string `toml:"guest"`
}

// Defaults returns the configuration used for keys the file leaves out.
func Defaults() Config {
	var c Config
	c.VMM = "auto"
	c.LogLevel = "info"
	c.QEMU.Binary = "qemu-system-x86_64"
	c.QEMU.Accel = "auto"
	c.Firecracker.Binary = "firecracker"
	c.Disk.Backend = "auto"
	c.VM.VCPU = 2
	c.VM.Memory = "1GiB"
	c.VM.WorkSize = "4GiB"
	c.VM.ReadyTimeout = "180s"
	c.Network.Bridge = "banger0"
	c.Network.CIDR = "10.213.0.0/24"
	c.Network.DNSListen = "127.0.0.1:5354"
	c.Network.TapPool = 4
	return c
}

// Load reads path over the defaults. A missing file is not an error.
func Load(path string) (Config, error) {
	c := Defaults()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return c, fmt.Errorf("%s: unknown key %s (see the README's configuration section for valid keys)", path, strings.Join(keys, ", "))
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks values whose type alone does not make them valid.
func (c Config) Validate() error {
	switch c.VMM {
	case "auto", "qemu", "firecracker":
	default:
		return fmt.Errorf("vmm = %q: want \"auto\", \"qemu\" or \"firecracker\"", c.VMM)
	}
	switch c.QEMU.Accel {
	case "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("qemu.accel = %q: want \"auto\", \"kvm\" or \"tcg\"", c.QEMU.Accel)
	}
	switch c.Disk.Backend {
	case "auto", "qcow2", "reflink", "dm", "copy":
	default:
		return fmt.Errorf("disk.backend = %q: want auto, qcow2, reflink, dm or copy", c.Disk.Backend)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level = %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.VM.VCPU < 1 {
		return fmt.Errorf("vm.vcpu = %d: must be at least 1", c.VM.VCPU)
	}
	for key, v := range map[string]string{"vm.memory": c.VM.Memory, "vm.work_size": c.VM.WorkSize} {
		if _, err := disk.ParseSize(v); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
	}
	if _, err := c.ReadyTimeout(); err != nil {
		return err
	}
	p, err := netip.ParsePrefix(c.Network.CIDR)
	if err != nil || !p.Addr().Is4() || p.Bits() > 29 || p.Bits() < 16 {
		return fmt.Errorf("network.cidr = %q: want an IPv4 prefix between /16 and /29, e.g. \"10.213.0.0/24\"", c.Network.CIDR)
	}
	if c.Network.TapPool < 0 || c.Network.TapPool > 64 {
		return fmt.Errorf("network.tap_pool = %d: want 0 (no pool) to 64", c.Network.TapPool)
	}
	if c.Network.DNS != "" {
		if _, err := netip.ParseAddr(c.Network.DNS); err != nil {
			return fmt.Errorf("network.dns = %q: not an IP address", c.Network.DNS)
		}
	}
	if c.Network.DNSListen != "" {
		if ap, err := netip.ParseAddrPort(c.Network.DNSListen); err != nil || !ap.Addr().IsLoopback() {
			return fmt.Errorf("network.dns_listen = %q: want a loopback address and port, e.g. \"127.0.0.1:5354\" (or \"\" for no DNS server)", c.Network.DNSListen)
		}
	}
	for _, u := range c.Network.DNSUpstreams {
		if _, err := netip.ParseAddr(u); err != nil {
			if _, err := netip.ParseAddrPort(u); err != nil {
				return fmt.Errorf("network.dns_upstreams: %q is not an IP or IP:port", u)
			}
		}
	}
	for key, v := range map[string]string{"image.kernel": c.Image.Kernel, "image.initrd": c.Image.Initrd} {
		if v != "" && !strings.HasPrefix(v, "/") {
			return fmt.Errorf("%s = %q: want an absolute path", key, v)
		}
	}
	for key, u := range map[string]string{"image.catalog_url": c.Image.CatalogURL, "kernel.catalog_url": c.Kernel.CatalogURL} {
		if u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return fmt.Errorf("%s = %q: want an http:// or https:// URL", key, u)
		}
	}
	for i, e := range c.FileSync {
		switch {
		case e.Host == "":
			return fmt.Errorf("file_sync #%d: host is empty; give a path like \"~/.gitconfig\"", i+1)
		case !strings.HasPrefix(e.Host, "~/") && !strings.HasPrefix(e.Host, "/"):
			return fmt.Errorf("file_sync #%d: host = %q must start with ~/ or /", i+1, e.Host)
		case e.Guest == "" && !strings.HasPrefix(e.Host, "~/"):
			return fmt.Errorf("file_sync #%d: guest is empty, which needs host to start with ~/ (got %q)", i+1, e.Host)
		case strings.HasPrefix(e.Guest, "/") && e.Guest != "/root" && !strings.HasPrefix(e.Guest, "/root/"):
			return fmt.Errorf("file_sync #%d: guest = %q must be under /root", i+1, e.Guest)
		}
	}
	return nil
}

// CIDR returns the parsed, masked network prefix.
func (c Config) CIDR() netip.Prefix {
	return netip.MustParsePrefix(c.Network.CIDR).Masked()
}

// ReadyTimeout parses vm.ready_timeout.
func (c Config) ReadyTimeout() (time.Duration, error) {
	d, err := time.ParseDuration(c.VM.ReadyTimeout)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("vm.ready_timeout = %q: want a duration such as \"120s\"", c.VM.ReadyTimeout)
	}
	return d, nil
}
