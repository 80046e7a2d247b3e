package bootinit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	c, err := Parse(`console=ttyS0 root=/dev/vda rw panic=-1 net.ifnames=0 banger.hostname=web-1 banger.ip=10.0.0.5/24 ` +
		`banger.gw=10.0.0.1 banger.dns=10.0.0.1 banger.work=/dev/vdb banger.agent_vsock=1024 rootflags="noatime,discard" ` + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Root != "/dev/vda" || c.RootFSType != "ext4" || c.RootFlags != "noatime,discard" || c.Init != DefaultInit || c.InitGiven ||
		c.Hostname != "web-1" || c.IP.String() != "10.0.0.5/24" || c.Gateway.String() != "10.0.0.1" ||
		c.DNS.String() != "10.0.0.1" || c.Work != "/dev/vdb" || c.AgentVsock != 1024 || c.ForceInit {
		t.Fatalf("parsed %+v", c)
	}
	c, err = Parse("root=LABEL=banger-root rootfstype=xfs init=/bin/sh banger.init=banger")
	if err != nil || c.Root != "LABEL=banger-root" || c.RootFSType != "xfs" || c.Init != "/bin/sh" || !c.InitGiven || !c.ForceInit {
		t.Fatalf("parsed %+v %v", c, err)
	}
	if got := strings.Join(agentArgs(Config{AgentVsock: 1024}), " "); got != "-vsock 1024" {
		t.Fatalf("agent args %q", got)
	}
	if len(agentArgs(Config{})) != 0 {
		t.Fatal("agent args without vsock")
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ cmdline, want string }{
		{"console=ttyS0", "no root="},
		{"root=/dev/vda banger.hostname=-bad", `invalid banger.hostname="-bad"`},
		{"root=/dev/vda banger.hostname=a_b", `invalid banger.hostname`},
		{"root=/dev/vda banger.ip=10.0.0.5", `invalid banger.ip="10.0.0.5"`},
		{"root=/dev/vda banger.ip=fd00::1/64", "want an IPv4"},
		{"root=/dev/vda banger.gw=nope", "invalid banger.gw"},
		{"root=/dev/vda banger.dns=1.2.3", "invalid banger.dns"},
		{"root=/dev/vda banger.agent_vsock=x", "invalid banger.agent_vsock"},
		{"root=/dev/vda banger.agent_vsock=0", "port 0"},
		{"root=/dev/vda banger.init=systemd", "want banger or auto"},
		{"root=/dev/vda init=sbin/init", "absolute path"},
		{"root=/dev/vda banger.gw=10.0.0.1", "without banger.ip"},
	} {
		_, err := Parse(c.cmdline)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", c.cmdline, err, c.want)
		}
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline(`a=1  b="x y" "c=d e"  f` + "\n")
	want := []string{"a=1", "b=x y", "c=d e", "f"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q want %q", got, want)
	}
}

// mkroot makes a root tree with the given files (executable) and symlinks.
func mkroot(t *testing.T, files []string, links map[string]string) string {
	root := t.TempDir()
	for _, f := range files {
		os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755)
		if err := os.WriteFile(filepath.Join(root, f), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for l, target := range links {
		os.MkdirAll(filepath.Join(root, filepath.Dir(l)), 0o755)
		if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestChooseMode(t *testing.T) {
	// Debian with merged /usr: /sbin -> usr/sbin, /usr/sbin/init -> /lib/systemd/systemd, /lib -> usr/lib.
	debian := mkroot(t, []string{"usr/lib/systemd/systemd"}, map[string]string{
		"sbin": "usr/sbin", "lib": "usr/lib", "usr/sbin/init": "/lib/systemd/systemd",
	})
	busybox := mkroot(t, []string{"bin/busybox"}, map[string]string{"sbin/init": "../bin/busybox", "bin/sh": "busybox"})
	empty := mkroot(t, []string{"bin/app"}, nil)
	escape := mkroot(t, nil, map[string]string{"sbin/init": "/../../../../../bin/true"})

	auto := Config{Init: DefaultInit}
	for _, c := range []struct {
		name   string
		root   string
		cfg    Config
		banger bool
		why    string
		err    string
	}{
		{"debian systemd", debian, auto, false, "", ""},
		{"debian forced", debian, Config{Init: DefaultInit, ForceInit: true}, true, "banger.init=banger", ""},
		{"busybox init", busybox, auto, true, "/sbin/init is /bin/busybox, not systemd", ""},
		{"no init", empty, auto, true, "no usable /sbin/init", ""},
		{"explicit init kept", busybox, Config{Init: "/bin/sh", InitGiven: true}, false, "", ""},
		{"explicit init missing", empty, Config{Init: "/bin/bash", InitGiven: true}, false, "", "init /bin/bash not usable"},
		{"link leaving the root", escape, auto, true, "no usable /sbin/init", ""},
	} {
		banger, why, err := chooseMode(c.root, c.cfg)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err %v, want %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || banger != c.banger || !strings.Contains(why, c.why) {
			t.Errorf("%s: banger=%v why=%q err=%v; want banger=%v why~%q", c.name, banger, why, err, c.banger, c.why)
		}
	}
	loop := mkroot(t, nil, map[string]string{"sbin/init": "init2", "sbin/init2": "init"})
	if _, err := resolveIn(loop, "/sbin/init"); err == nil || !strings.Contains(err.Error(), "too many levels") {
		t.Fatalf("symlink loop: %v", err)
	}
}

func TestApplySettings(t *testing.T) {
	c, err := Parse("root=/dev/vda banger.hostname=vm1 banger.ip=10.1.0.7/16 banger.gw=10.1.0.1 banger.dns=10.1.0.1")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1\tlocalhost\n127.0.1.1\told\n::1 ip6-localhost"), 0o644)
	os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc/resolv.conf"))
	if err := applySettings(root, c, true, "52:54:00:12:34:56"); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("etc/hostname"); got != "vm1\n" {
		t.Errorf("hostname %q", got)
	}
	if got := read("etc/hosts"); got != "127.0.0.1\tlocalhost\n::1 ip6-localhost\n127.0.1.1\tvm1\n" {
		t.Errorf("hosts %q", got)
	}
	if got := read("etc/resolv.conf"); got != "nameserver 10.1.0.1\n" {
		t.Errorf("resolv.conf %q", got)
	}
	if st, _ := os.Lstat(filepath.Join(root, "etc/resolv.conf")); !st.Mode().IsRegular() {
		t.Error("resolv.conf is still a symlink")
	}
	nw := read("etc/systemd/network/10-banger.network")
	for _, want := range []string{"MACAddress=52:54:00:12:34:56", "Address=10.1.0.7/16", "Gateway=10.1.0.1", "DNS=10.1.0.1"} {
		if !strings.Contains(nw, want) {
			t.Errorf("network file lacks %s:\n%s", want, nw)
		}
	}
	// Unchanged content is not rewritten (mtime kept).
	st1, _ := os.Stat(filepath.Join(root, "etc/hostname"))
	if err := applySettings(root, c, true, "52:54:00:12:34:56"); err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(filepath.Join(root, "etc/hostname"))
	if !st1.ModTime().Equal(st2.ModTime()) || !os.SameFile(st1, st2) {
		t.Error("unchanged /etc/hostname was rewritten")
	}
	// banger mode writes no networkd file; DHCP is the fallback in systemd mode.
	root2 := t.TempDir()
	if err := applySettings(root2, Config{}, false, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root2, "etc/systemd")); err == nil {
		t.Error("banger mode wrote systemd files")
	}
	if nw := string(networkdFile(Config{}, "")); !strings.Contains(nw, "DHCP=ipv4") || !strings.Contains(nw, "Name=eth0") {
		t.Errorf("DHCP network file:\n%s", nw)
	}
}

func TestMountOptions(t *testing.T) {
	flags, data := mountOptions("rw,noatime,discard,nosuid,,errors=remount-ro")
	if flags != unix.MS_NOATIME|unix.MS_NOSUID || data != "discard,errors=remount-ro" {
		t.Fatalf("flags %#x data %q", flags, data)
	}
}

// A real ext4 image made by mkfs.ext4 is recognised by UUID and label.
func TestExt4Identity(t *testing.T) {
	img := filepath.Join(t.TempDir(), "fs.ext4")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 8<<20)
	const uuid = "0b7c6d4e-1f2a-4b3c-9d8e-7f6a5b4c3d2e"
	if out, err := runCmd("mkfs.ext4", "-q", "-F", "-L", "banger-root", "-U", uuid, img); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	u, l, err := ext4Identity(img)
	if err != nil || u != uuid || l != "banger-root" {
		t.Fatalf("identity %q %q %v", u, l, err)
	}
	other := filepath.Join(t.TempDir(), "zero")
	os.WriteFile(other, make([]byte, 4096), 0o644)
	if _, _, err := ext4Identity(other); err == nil {
		t.Fatal("a zero file was taken for ext4")
	}
}

func TestParseModules(t *testing.T) {
	c, err := Parse("root=/dev/vda banger.modules=/dev/vdc")
	if err != nil || c.Modules != "/dev/vdc" {
		t.Fatalf("parsed %+v %v", c, err)
	}
	if c, err := Parse("root=/dev/vda"); err != nil || c.Modules != "" {
		t.Fatalf("without banger.modules: %+v %v", c, err)
	}
	if _, err := Parse("root=/dev/vda banger.modules=vdc"); err == nil || !strings.Contains(err.Error(), `invalid banger.modules="vdc"`) {
		t.Fatalf("relative device: %v", err)
	}
}

// The mount point of the modules image: symlinks of the image resolved
// inside the root, missing directories created, nothing else written.
func TestModulesMountPoint(t *testing.T) {
	const rel = "6.1.0-56-cloud-amd64"
	isDir := func(t *testing.T, p string) {
		t.Helper()
		if st, err := os.Lstat(p); err != nil || !st.IsDir() {
			t.Fatalf("%s is not a directory: %v", p, err)
		}
	}
	for _, c := range []struct {
		name  string
		files []string
		links map[string]string
		dirs  []string
		want  string
		err   string
	}{
		{name: "merged /usr, relative link", links: map[string]string{"lib": "usr/lib"}, dirs: []string{"usr/lib"}, want: "/usr/lib/modules/" + rel},
		// An absolute link must resolve in the root, not in the initramfs.
		{name: "merged /usr, absolute link", links: map[string]string{"lib": "/usr/lib"}, dirs: []string{"usr/lib/modules"}, want: "/usr/lib/modules/" + rel},
		{name: "release dir exists", dirs: []string{"lib/modules/" + rel + "/kernel"}, want: "/lib/modules/" + rel},
		{name: "no /lib at all", want: "/lib/modules/" + rel},
		{name: "release is a file", files: []string{"lib/modules/" + rel}, err: "not a directory"},
		{name: "dangling link", links: map[string]string{"lib/modules/" + rel: "/nowhere"}, dirs: []string{"lib/modules"}, err: "file exists"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := mkroot(t, c.files, c.links)
			for _, d := range c.dirs {
				if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			got, err := modulesMountPoint(root, rel)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("got %q, %v; want an error containing %q", got, err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
			isDir(t, filepath.Join(root, got))
			if c.dirs != nil && c.dirs[0] == "lib/modules/"+rel+"/kernel" {
				isDir(t, filepath.Join(root, got, "kernel")) // the image's own tree is left as it was
			}
		})
	}
	if _, err := modulesMountPoint(t.TempDir(), "../etc"); err == nil {
		t.Fatal("a release with a slash was accepted")
	}
}
