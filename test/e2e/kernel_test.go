package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/initrd"
	"banger/internal/vmm/qemu"
)

// busyboxRootfs builds, without mounting anything, an ext4 root filesystem
// holding only a static busybox (no systemd, no sshd, no udev): /sbin/init
// is busybox, so banger-init stays the guest's init.
func busyboxRootfs(t *testing.T, dir string) string {
	t.Helper()
	const busybox = "/bin/busybox"
	if out, err := exec.Command("ldd", busybox).CombinedOutput(); err == nil {
		t.Fatalf("%s is dynamically linked (install busybox-static): %s", busybox, out)
	}
	tree := filepath.Join(dir, "bbroot")
	for _, d := range []string{"bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "bin/busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			os.Symlink("busybox", filepath.Join(tree, "bin", applet))
		}
	}
	os.Symlink("../bin/busybox", filepath.Join(tree, "sbin/init"))
	os.WriteFile(filepath.Join(tree, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(tree, "etc/group"), []byte("root:x:0:\n"), 0o644)
	img := filepath.Join(dir, "busybox.ext4")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "bgt-busybox", "-d", tree, "-E", "root_owner=0:0", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	return img
}

// TestNoInitImage boots an image with no systemd and no sshd: banger-init
// is its init, brings up the network and the agent, `vm exec` works, and
// `vm stop` powers it off cleanly through the guest.
func TestNoInitImage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.importKernel()
	img := busyboxRootfs(t, e.home)
	e.must("image", "register", "--name", "bb", "--rootfs", img, "--kernel-name", fixtureKernel)

	e.must("vm", "create", "--image", "bb", "--name", "bb1")
	v := e.show("bb1")
	if v.State != api.StateRunning || !v.Agent {
		t.Fatalf("after create: %+v", v)
	}
	out := e.must("vm", "exec", "bb1", "--", "sh", "-c",
		`hostname; cat /proc/1/cmdline; echo; ip -4 -o addr show eth0 | awk '{print $4}'; ip route | awk '/^default/ {print $3}'; awk '$2 == "/root" {print $1}' /proc/mounts; cat /etc/resolv.conf`)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 6 {
		t.Fatalf("exec output:\n%s", out)
	}
	if lines[0] != "bb1" {
		t.Errorf("hostname %q, want bb1", lines[0])
	}
	if !strings.HasPrefix(lines[1], "/init") {
		t.Errorf("PID 1 is %q, want banger-init (/init)", lines[1])
	}
	if !strings.HasPrefix(lines[2], v.IP+"/") {
		t.Errorf("eth0 address %q, want %s/N", lines[2], v.IP)
	}
	gw := lines[3]
	if gw == "" {
		t.Errorf("no default route")
	}
	if lines[4] != "/dev/vdb" {
		t.Errorf("/root is mounted from %q, want the work disk /dev/vdb", lines[4])
	}
	assertContains(t, "resolv.conf", out, "nameserver ")
	// The network works: the gateway (the host bridge) answers.
	e.must("vm", "exec", "bb1", "--", "ping", "-c", "1", "-W", "5", gw)
	// Zombies are reaped: an orphan exits and disappears.
	e.must("vm", "exec", "bb1", "--", "sh", "-c", "(sleep 0.2 &) ; sleep 1")
	if z := e.must("vm", "exec", "bb1", "--", "sh", "-c", "grep -l '^State:.*Z' /proc/[0-9]*/status || true"); strings.TrimSpace(z) != "" {
		t.Errorf("zombies left: %s", z)
	}
	// Work written before stop is on the work disk after a restart.
	e.must("vm", "exec", "bb1", "--", "sh", "-c", "echo kept > /root/marker")

	start := time.Now()
	e.must("vm", "stop", "bb1")
	took := time.Since(start)
	v = e.show("bb1")
	if v.State != api.StateStopped || v.LastError != "" {
		t.Fatalf("after stop: %+v", v)
	}
	// A guest that ignored the request would take the whole stop timeout (60 s).
	if took > 30*time.Second {
		t.Errorf("stop took %s: the guest did not power itself off", took)
	}
	logs := e.must("vm", "logs", "bb1")
	assertContains(t, "console", logs, "banger-init: banger mode")
	assertContains(t, "console", logs, "stopping all processes and powering off")
	daemonLog, _ := os.ReadFile(filepath.Join(e.stateDir(), "bangerd.log"))
	if !strings.Contains(string(daemonLog), `how="guest powered off"`) {
		t.Errorf("daemon log does not say the guest powered off:\n%s", lastLines(string(daemonLog), 20))
	}

	e.must("vm", "start", "bb1")
	if got := strings.TrimSpace(e.must("vm", "exec", "bb1", "--", "cat", "/root/marker")); got != "kept" {
		t.Errorf("work disk after restart: %q", got)
	}
	e.must("vm", "delete", "--force", "bb1")
}

// seedKernelDeb puts the .deb `kernel pull` resolves to into the scenario's
// deb cache, downloading it (on the host network, with apt) into
// /var/cache/banger-test/kernel-debs once per package version: the daemon
// runs in a namespace without a route to the Debian mirror.
func seedKernelDeb(t *testing.T, e *env) {
	t.Helper()
	out, err := exec.Command("apt-cache", "depends", "linux-image-cloud-amd64").Output()
	if err != nil {
		t.Fatalf("apt-cache depends: %v", err)
	}
	var pkg string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-6") {
			pkg = f[1]
			break
		}
	}
	if pkg == "" {
		t.Fatalf("linux-image-cloud-amd64 does not resolve through apt:\n%s", out)
	}
	show, err := exec.Command("apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		t.Fatal(err)
	}
	var version string
	for _, l := range strings.Split(string(show), "\n") {
		if v, ok := strings.CutPrefix(l, "Version: "); ok {
			version = v
		}
	}
	file := pkg + "_" + strings.ReplaceAll(version, ":", "%3a") + ".deb"
	shared := filepath.Join("/var/cache/banger-test/kernel-debs", file)
	if _, err := os.Stat(shared); err != nil {
		tmp, err := os.MkdirTemp("/var/cache/banger-test", ".kernel-deb-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		dl := exec.Command("apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", pkg+"="+version)
		dl.Dir = tmp
		if b, err := dl.CombinedOutput(); err != nil {
			t.Fatalf("apt-get download: %v %s", err, b)
		}
		debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
		if len(debs) != 1 {
			t.Fatalf("apt-get download left %v", debs)
		}
		os.MkdirAll(filepath.Dir(shared), 0o755)
		if err := os.Rename(debs[0], shared); err != nil {
			t.Fatal(err)
		}
	}
	dst := filepath.Join(e.home, "cache/banger/kernel-debs", file)
	os.MkdirAll(filepath.Dir(dst), 0o755)
	if b, err := exec.Command("cp", shared, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, b)
	}
}

// TestKernelPull pulls the Debian cloud kernel through the host's apt
// sources into the kernel store, boots a VM with it, and checks that the
// store refuses bad input and removing a kernel in use.
func TestKernelPull(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	seedKernelDeb(t, e)

	var av []api.KernelAvailable
	if err := json.Unmarshal([]byte(e.must("kernel", "list", "--available", "--json")), &av); err != nil || len(av) == 0 || av[0].Pulled {
		t.Fatalf("kernel list --available: %+v %v", av, err)
	}
	r := e.run("kernel", "pull")
	if r.code != 0 {
		t.Fatalf("kernel pull: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, st := range []string{"resolve", "download", "unpack", "copy", "check modules", "modules image", "install"} {
		assertContains(t, "pull progress", r.stderr, st)
	}
	var k api.Kernel
	if err := json.Unmarshal([]byte(e.must("kernel", "show", "--json", av[0].Name)), &k); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.Source, "pull linux-image-") || k.Release == "" || k.SizeBytes < 10<<20 {
		t.Fatalf("pulled kernel: %+v", k)
	}
	if r := e.run("kernel", "pull"); r.code == 0 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("second pull without --force: exit %d %s", r.code, r.stderr)
	}

	e.must("image", "register", "--name", "default", "--rootfs", filepath.Join(guestDir, "rootfs.ext4"), "--kernel-name", k.Name)
	e.must("vm", "create", "--name", "pulled")
	if got := strings.TrimSpace(e.must("vm", "exec", "pulled", "--", "uname", "-r")); got != k.Release {
		t.Fatalf("guest runs %q, want the pulled %s", got, k.Release)
	}
	if r := e.run("kernel", "rm", k.Name); r.code == 0 || !strings.Contains(r.stderr, "used by image") {
		t.Fatalf("kernel rm of a kernel in use: exit %d %s", r.code, r.stderr)
	}

	// Bad input: clear errors, nothing added.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"kernel", "pull", "no-such-kernel"}, "no kernel \"no-such-kernel\" in the catalog"},
		{[]string{"kernel", "import", "Bad_Name", "--kernel", k.Kernel, "--modules", k.Modules}, "kernel name"},
		{[]string{"kernel", "import", "x", "--kernel", k.Kernel}, "--modules"},
		{[]string{"kernel", "import", "x", "--kernel", filepath.Join(guestDir, "kernel-release"), "--modules", k.Modules}, "not a kernel"},
		{[]string{"kernel", "import", "x", "--kernel", k.Kernel, "--modules", e.home}, "not a modules directory"},
		{[]string{"image", "register", "--name", "x", "--rootfs", filepath.Join(guestDir, "rootfs.ext4"), "--kernel-name", "nope"}, "no kernel named"},
		{[]string{"image", "register", "--name", "x", "--rootfs", filepath.Join(guestDir, "rootfs.ext4"), "--kernel-name", k.Name, "--kernel", k.Kernel}, "excludes"},
	} {
		r := e.run(c.args...)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("banger %v: exit %d, stderr %q; want an error containing %q", c.args, r.code, r.stderr, c.want)
		}
	}
	var ks []api.Kernel
	json.Unmarshal([]byte(e.must("kernel", "list", "--json")), &ks)
	if len(ks) != 1 {
		t.Fatalf("kernels after bad input: %+v", ks)
	}
	if left, _ := filepath.Glob(filepath.Join(e.stateDir(), "kernels", ".import-*")); len(left) != 0 {
		t.Fatalf("staging left behind: %v", left)
	}

	e.must("vm", "delete", "--force", "pulled")
	e.must("image", "delete", "default")
	e.must("kernel", "rm", k.Name)
	if _, err := os.Stat(k.Kernel); !os.IsNotExist(err) {
		t.Fatalf("kernel files remain after rm: %v", err)
	}
}

// TestInitFatalPowersOff boots banger's initramfs straight under QEMU with
// a root device that never appears: banger-init must say why on the
// console and power the machine off, so QEMU exits by itself.
func TestInitFatalPowersOff(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release, err := os.ReadFile(filepath.Join(guestDir, "kernel-release"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := initrd.Build(dir, initrd.Spec{Init: filepath.Join(binDir, "banger-init"),
		Modules: filepath.Join(guestDir, "modules", strings.TrimSpace(string(release)))})
	if err != nil {
		t.Fatal(err)
	}
	khz, err := qemu.HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(dir, "console.log")
	cmd := exec.Command("qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", filepath.Join(guestDir, "vmlinuz"), "-initrd", img,
		"-append", fmt.Sprintf("console=ttyS0 root=/dev/vdz panic=-1 tsc_early_khz=%d tsc=reliable banger.hostname=fatal", khz),
		"-serial", "file:"+console)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("QEMU: %v", err)
		}
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		<-done
		b, _ := os.ReadFile(console)
		t.Fatalf("the guest did not power off after a fatal error; console:\n%s", lastLines(string(b), 20))
	}
	b, _ := os.ReadFile(console)
	assertContains(t, "console", string(b), "banger-init: FATAL: root device /dev/vdz did not appear within 10s")
	assertContains(t, "console", string(b), "banger-init: powering off")
}
