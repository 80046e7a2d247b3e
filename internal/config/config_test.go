package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeConfig writes body to a fresh config.toml and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAreValid(t *testing.T) {
	d := Defaults()
	if err := d.Validate(); err != nil {
		t.Fatalf("Defaults().Validate() = %v", err)
	}
	if got, want := d.CIDR(), netip.MustParsePrefix("10.213.0.0/24"); got != want {
		t.Errorf("Defaults().CIDR() = %v, want %v", got, want)
	}
	if got, err := d.ReadyTimeout(); err != nil || got != 180*time.Second {
		t.Errorf("Defaults().ReadyTimeout() = %v, %v; want 3m0s", got, err)
	}
}

func TestLoadWithoutContentGivesDefaults(t *testing.T) {
	cases := map[string]string{
		"missing file":  filepath.Join(t.TempDir(), "does-not-exist.toml"),
		"empty file":    writeConfig(t, ""),
		"comments only": writeConfig(t, "# nothing set here\n\n   # still nothing\n"),
		"empty tables":  writeConfig(t, "[qemu]\n[firecracker]\n[disk]\n[vm]\n[network]\n"),
	}
	for name, path := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if want := Defaults(); !reflect.DeepEqual(got, want) {
				t.Errorf("Load = %+v\nwant defaults %+v", got, want)
			}
		})
	}
}

func TestLoadEveryKey(t *testing.T) {
	path := writeConfig(t, `
vmm = "qemu"
log_level = "debug"

[qemu]
binary = "/opt/qemu/bin/qemu-system-x86_64"
accel = "tcg"

[firecracker]
binary = "/usr/local/bin/firecracker"
jailer = "/usr/local/bin/jailer"

[disk]
backend = "qcow2"

[vm]
vcpu = 4
memory = "512MiB"
work_size = "8GiB"
ready_timeout = "90s"

[network]
bridge = "bangertest0"
cidr = "10.99.8.0/22"
dns = "192.0.2.53"

[image]
kernel = "/var/lib/banger/kernels/vmlinuz"
initrd = "/var/lib/banger/kernels/initrd.img"
catalog_url = "http://127.0.0.1:8080/catalog.json"

[kernel]
catalog_url = "http://127.0.0.1:8080/kernels.json"
`)
	got, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := Defaults()
	want.VMM = "qemu"
	want.LogLevel = "debug"
	want.QEMU.Binary = "/opt/qemu/bin/qemu-system-x86_64"
	want.QEMU.Accel = "tcg"
	want.Firecracker.Binary = "/usr/local/bin/firecracker"
	want.Firecracker.Jailer = "/usr/local/bin/jailer"
	want.Disk.Backend = "qcow2"
	want.VM.VCPU = 4
	want.VM.Memory = "512MiB"
	want.VM.WorkSize = "8GiB"
	want.VM.ReadyTimeout = "90s"
	want.Network.Bridge = "bangertest0"
	want.Network.CIDR = "10.99.8.0/22"
	want.Network.DNS = "192.0.2.53"
	want.Image.Kernel = "/var/lib/banger/kernels/vmlinuz"
	want.Image.Initrd = "/var/lib/banger/kernels/initrd.img"
	want.Image.CatalogURL = "http://127.0.0.1:8080/catalog.json"
	want.Kernel.CatalogURL = "http://127.0.0.1:8080/kernels.json"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
	}
	if d, err := got.ReadyTimeout(); err != nil || d != 90*time.Second {
		t.Errorf("ReadyTimeout() = %v, %v; want 1m30s", d, err)
	}
	if p := got.CIDR(); p != netip.MustParsePrefix("10.99.8.0/22") {
		t.Errorf("CIDR() = %v", p)
	}
}

// A file that sets only some keys keeps the defaults for the others.
func TestLoadPartialKeepsOtherDefaults(t *testing.T) {
	got, err := Load(writeConfig(t, "[vm]\nmemory = \"2GiB\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	want.VM.Memory = "2GiB"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
	}
}

func TestLoadSizes(t *testing.T) {
	for _, size := range []string{"512MiB", "4GiB", "1G", "768M", "1.5GiB", "1073741824"} {
		t.Run(size, func(t *testing.T) {
			c, err := Load(writeConfig(t, "[vm]\nmemory = \""+size+"\"\nwork_size = \""+size+"\"\n"))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if c.VM.Memory != size || c.VM.WorkSize != size {
				t.Errorf("memory/work_size = %q/%q, want %q", c.VM.Memory, c.VM.WorkSize, size)
			}
		})
	}
}

func TestLoadCIDRIsMasked(t *testing.T) {
	c, err := Load(writeConfig(t, "[network]\ncidr = \"10.213.7.9/24\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.CIDR(), netip.MustParsePrefix("10.213.7.0/24"); got != want {
		t.Errorf("CIDR() = %v, want %v", got, want)
	}
}

// loadErr loads body and returns the error text, failing when Load accepts it.
func loadErr(t *testing.T, body string) (path, msg string) {
	t.Helper()
	path = writeConfig(t, body)
	c, err := Load(path)
	if err == nil {
		t.Fatalf("Load accepted %q: %+v", body, c)
	}
	msg = err.Error()
	if !strings.Contains(msg, path) {
		t.Errorf("error %q does not name the file %s", msg, path)
	}
	return path, msg
}

func TestLoadRejectsUnknownKeys(t *testing.T) {
	cases := []struct {
		name, body string
		keys       []string // each must appear in the message
	}{
		{"top level", "colour = \"blue\"\n", []string{"colour"}},
		{"nested", "[vm]\nvcpus = 2\n", []string{"vm.vcpus"}},
		{"nested dotted at top", "vm.vcpus = 2\n", []string{"vm.vcpus"}},
		{"misspelt table", "[netwrok]\ncidr = \"10.0.0.0/24\"\n", []string{"netwrok"}},
		{"next to valid keys", "vmm = \"qemu\"\n[qemu]\naccel = \"tcg\"\nacel = \"kvm\"\n", []string{"qemu.acel"}},
		{"several", "zzz = 1\n[disk]\nbackand = \"copy\"\n", []string{"disk.backand", "zzz"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, msg := loadErr(t, tc.body)
			if !strings.Contains(msg, "unknown key") {
				t.Errorf("error %q does not say \"unknown key\"", msg)
			}
			for _, k := range tc.keys {
				if !strings.Contains(msg, k) {
					t.Errorf("error %q does not name the key %q", msg, k)
				}
			}
		})
	}
}

// Several unknown keys are listed sorted, so the message is stable.
func TestLoadUnknownKeysSorted(t *testing.T) {
	_, msg := loadErr(t, "zeta = 1\nalpha = 2\n[vm]\nmid = 3\n")
	a, m, z := strings.Index(msg, "alpha"), strings.Index(msg, "vm.mid"), strings.Index(msg, "zeta")
	if a < 0 || m < 0 || z < 0 || !(a < m && m < z) {
		t.Errorf("unknown keys not listed in sorted order: %q", msg)
	}
}

func TestLoadRejectsWrongTypes(t *testing.T) {
	cases := []struct {
		name, body string
		want       []string
	}{
		{"string for int", "[vm]\nvcpu = \"two\"\n", []string{`"vm.vcpu"`, "line 2", "type string", "type integer"}},
		{"int for string", "vmm = 3\n", []string{`"vmm"`, "line 1", "type int64", "type string"}},
		{"int size", "[vm]\nmemory = 512\n", []string{`"vm.memory"`, "line 2", "type int64", "type string"}},
		{"float for int", "[vm]\nvcpu = 1.5\n", []string{`"vm.vcpu"`, "type float64"}},
		{"bool for string", "[qemu]\naccel = true\n", []string{`"qemu.accel"`, "type bool"}},
		{"scalar for table", "vm = 1\n", []string{`"vm"`, "expected table"}},
		{"table for scalar", "[vmm]\nname = \"qemu\"\n", []string{`"vmm"`, "incompatible types"}},
		{"syntax error", "vmm = qemu\n", []string{"line 1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, msg := loadErr(t, tc.body)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
		})
	}
}

func TestLoadRejectsInvalidValues(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"vmm", `vmm = "kvmtool"`, `vmm = "kvmtool"`},
		{"log level", `log_level = "verbose"`, `log_level = "verbose"`},
		{"accel", "[qemu]\naccel = \"hvf\"", `qemu.accel = "hvf"`},
		{"disk backend", "[disk]\nbackend = \"zfs\"", `disk.backend = "zfs"`},
		{"vcpu zero", "[vm]\nvcpu = 0", "vm.vcpu = 0"},
		{"vcpu negative", "[vm]\nvcpu = -2", "vm.vcpu = -2"},
		{"memory zero", "[vm]\nmemory = \"0\"", "vm.memory"},
		{"memory words", "[vm]\nmemory = \"lots\"", "vm.memory"},
		{"memory negative", "[vm]\nmemory = \"-1GiB\"", "vm.memory"},
		{"memory empty", "[vm]\nmemory = \"\"", "vm.memory"},
		{"work size unit", "[vm]\nwork_size = \"4XB\"", "vm.work_size"},
		{"ready timeout word", "[vm]\nready_timeout = \"soon\"", "vm.ready_timeout"},
		{"ready timeout no unit", "[vm]\nready_timeout = \"120\"", "vm.ready_timeout"},
		{"ready timeout zero", "[vm]\nready_timeout = \"0s\"", "vm.ready_timeout"},
		{"ready timeout negative", "[vm]\nready_timeout = \"-5s\"", "vm.ready_timeout"},
		{"cidr garbage", "[network]\ncidr = \"ten-two-thirteen\"", "network.cidr"},
		{"cidr no bits", "[network]\ncidr = \"10.213.0.0\"", "network.cidr"},
		{"cidr too small", "[network]\ncidr = \"10.213.0.0/30\"", "network.cidr"},
		{"cidr too large", "[network]\ncidr = \"10.0.0.0/8\"", "network.cidr"},
		{"cidr ipv6", "[network]\ncidr = \"fd00::/64\"", "network.cidr"},
		{"tap pool negative", "[network]\ntap_pool = -1", "network.tap_pool"},
		{"tap pool huge", "[network]\ntap_pool = 65", "network.tap_pool"},
		{"dns not an ip", "[network]\ndns = \"dns.example\"", "network.dns"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, msg := loadErr(t, tc.body+"\n")
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not mention %q", msg, tc.want)
			}
		})
	}
}

// Boundary values that are valid must load.
func TestLoadAcceptsBoundaryValues(t *testing.T) {
	for _, body := range []string{
		"[vm]\nvcpu = 1",
		"[network]\ncidr = \"10.0.0.0/16\"",
		"[network]\ncidr = \"192.168.50.0/29\"",
		"[network]\ndns = \"fd00::53\"",
		"vmm = \"firecracker\"",
		"vmm = \"auto\"\n[qemu]\naccel = \"kvm\"",
		"[disk]\nbackend = \"dm\"",
		"[disk]\nbackend = \"reflink\"",
		"[disk]\nbackend = \"copy\"",
		"log_level = \"error\"",
		"[vm]\nready_timeout = \"2m30s\"",
	} {
		if _, err := Load(writeConfig(t, body+"\n")); err != nil {
			t.Errorf("Load(%q) = %v, want success", body, err)
		}
	}
}

func TestLoadUnreadablePath(t *testing.T) {
	dir := t.TempDir() // a directory exists but cannot be read as a file
	if _, err := Load(dir); err == nil {
		t.Fatalf("Load(%s) on a directory succeeded", dir)
	}
}

func TestFileSync(t *testing.T) {
	c, err := Load(writeConfig(t, "[[file_sync]]\nhost = \"~/.gitconfig\"\n\n[[file_sync]]\nhost = \"/etc/hosts\"\nguest = \"~/hosts\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []SyncEntry{{Host: "~/.gitconfig"}, {Host: "/etc/hosts", Guest: "~/hosts"}}
	if len(c.FileSync) != 2 || c.FileSync[0] != want[0] || c.FileSync[1] != want[1] {
		t.Fatalf("file_sync = %+v", c.FileSync)
	}
	for _, bad := range []string{
		"[[file_sync]]\nguest = \"~/x\"\n",
		"[[file_sync]]\nhost = \"relative\"\n",
		"[[file_sync]]\nhost = \"/etc/hosts\"\n",
		"[[file_sync]]\nhost = \"~/a\"\nguest = \"/etc/a\"\n",
		"[[file_sync]]\nhost = \"~/a\"\nhots = \"typo\"\n",
	} {
		if _, err := Load(writeConfig(t, bad)); err == nil || !strings.Contains(err.Error(), "file_sync") {
			t.Errorf("%q: err = %v, want a file_sync error", bad, err)
		}
	}
}

func TestImageKeysValidated(t *testing.T) {
	for body, want := range map[string]string{
		"[image]\nkernel = \"vmlinuz\"\n":             "image.kernel",
		"[image]\ninitrd = \"rel/initrd\"\n":          "image.initrd",
		"[image]\ncatalog_url = \"ftp://x/c.json\"\n": "image.catalog_url",
		"[kernel]\ncatalog_url = \"/k.json\"\n":       "kernel.catalog_url",
	} {
		_, err := Load(writeConfig(t, body))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load(%q) = %v, want an error naming %s", body, err, want)
		}
	}
}
