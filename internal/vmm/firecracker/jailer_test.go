package firecracker

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"banger/internal/vmm"
)

func TestJailLayout(t *testing.T) {
	o := JailerOptions{Binary: "/usr/bin/jailer", ChrootBase: "/srv/jailer/", UID: 123, GID: 100}
	l, err := newJailLayout(o, "/usr/bin/firecracker-v1.7", "web1")
	if err != nil {
		t.Fatal(err)
	}
	want := jailLayout{
		ID:       "web1",
		ExecFile: "/usr/bin/firecracker-v1.7",
		Base:     "/srv/jailer",
		Dir:      "/srv/jailer/firecracker-v1.7/web1",
		Root:     "/srv/jailer/firecracker-v1.7/web1/root",
	}
	if l != want {
		t.Fatalf("layout = %+v\nwant     %+v", l, want)
	}
	if got := l.APISocket(); got != "/srv/jailer/firecracker-v1.7/web1/root/run/firecracker.sock" {
		t.Errorf("APISocket = %s", got)
	}
	// Jail paths cannot escape the root.
	if got := l.HostPath("../../etc/passwd"); got != "/srv/jailer/firecracker-v1.7/web1/root/etc/passwd" {
		t.Errorf("HostPath escaped: %s", got)
	}
	if id := jailIDFromSocket(l.APISocket()); id != "web1" {
		t.Errorf("jailIDFromSocket = %q", id)
	}
	if id := jailIDFromSocket("/run/banger/web1/firecracker.sock"); id != "" {
		t.Errorf("jailIDFromSocket of an unjailed socket = %q", id)
	}

	// Default chroot base.
	if l, err := newJailLayout(JailerOptions{}, "/opt/firecracker", "a-b"); err != nil || l.Root != "/srv/jailer/firecracker/a-b/root" {
		t.Errorf("default base: %+v, %v", l, err)
	}
	bad := []struct{ exec, id, base, mention string }{
		{"firecracker", "web1", "", "absolute"},
		{"/usr/bin/vmm", "web1", "", `must contain "firecracker"`},
		{"/usr/bin/firecracker", "web_1", "", "invalid id"},
		{"/usr/bin/firecracker", "", "", "invalid id"},
		{"/usr/bin/firecracker", "web1", "jail", "absolute"},
		{"/usr/bin/firecracker", strings.Repeat("x", 64), "/" + strings.Repeat("d", 40), "longer than a Unix socket allows"},
	}
	for _, b := range bad {
		_, err := newJailLayout(JailerOptions{ChrootBase: b.base}, b.exec, b.id)
		if err == nil || !strings.Contains(err.Error(), b.mention) {
			t.Errorf("newJailLayout(%q, %q, base %q) = %v, want error mentioning %q", b.exec, b.id, b.base, err, b.mention)
		}
	}
}

func TestJailerArgv(t *testing.T) {
	o := JailerOptions{Binary: "/usr/bin/jailer", ChrootBase: "/srv/jailer", UID: 123, GID: 100}
	l, err := newJailLayout(o, "/usr/bin/firecracker", "web1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/usr/bin/jailer",
		"--id", "web1",
		"--exec-file", "/usr/bin/firecracker",
		"--uid", "123", "--gid", "100",
		"--chroot-base-dir", "/srv/jailer",
		"--", "--api-sock", "/run/firecracker.sock"}
	if got := jailerArgv(o, l); !reflect.DeepEqual(got, want) {
		t.Errorf("argv:\n got %q\nwant %q", got, want)
	}

	for ns, path := range map[string]string{"banger-web1": "/var/run/netns/banger-web1", "/run/netns/x": "/run/netns/x"} {
		o.NetNS = ns
		got := jailerArgv(o, l)
		i := indexOf(got, "--netns")
		if i < 0 || got[i+1] != path || i > indexOf(got, "--") {
			t.Errorf("NetNS %q: argv %q, want --netns %s before --", ns, got, path)
		}
	}
	if got := jailerArgv(JailerOptions{}, l)[0]; got != "jailer" {
		t.Errorf("default jailer binary = %q", got)
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func TestStageFilesPlan(t *testing.T) {
	l, err := newJailLayout(JailerOptions{ChrootBase: "/srv/jailer"}, "/usr/bin/firecracker", "web1")
	if err != nil {
		t.Fatal(err)
	}
	spec := vmm.Spec{
		Name: "web1", RunDir: "/run/banger/web1",
		Kernel: "/var/lib/banger/kernels/6.1/vmlinux", Initrd: "/var/lib/banger/initrd.img",
		Drives: []vmm.Drive{
			{ID: "root", Path: "/var/lib/banger/vms/web1/root.img", Root: true},
			{ID: "seed", Path: "/dev/mapper/banger-seed", ReadOnly: true},
		},
		NICs:         []vmm.NIC{{ID: "eth0", Tap: "tap0"}},
		ConsoleLog:   "/var/log/banger/web1.console",
		GuestChannel: "/run/banger/web1/agent.sock",
	}
	steps, jailed := stageFiles(l, spec)
	root := "/srv/jailer/firecracker/web1/root"
	want := []stageStep{
		{Kind: stageDir, JailPath: "/run", Dst: root + "/run", Writable: true},
		{Kind: stageFile, JailPath: "/run/vmm.log", Dst: root + "/run/vmm.log", Writable: true},
		{Kind: stageLink, Src: spec.Kernel, JailPath: "/kernel", Dst: root + "/kernel"},
		{Kind: stageLink, Src: spec.Initrd, JailPath: "/initrd", Dst: root + "/initrd"},
		{Kind: stageLink, Src: spec.Drives[0].Path, JailPath: "/drive-root", Dst: root + "/drive-root", Writable: true},
		{Kind: stageLink, Src: spec.Drives[1].Path, JailPath: "/drive-seed", Dst: root + "/drive-seed"},
	}
	if !reflect.DeepEqual(steps, want) {
		t.Errorf("steps:\n got %+v\nwant %+v", steps, want)
	}
	if jailed.RunDir != "/run" || jailed.Kernel != "/kernel" || jailed.Initrd != "/initrd" ||
		jailed.Drives[0].Path != "/drive-root" || jailed.Drives[1].Path != "/drive-seed" ||
		jailed.GuestChannel != "/run/vsock.sock" {
		t.Errorf("jailed spec = %+v", jailed)
	}
	// What does not name a file Firecracker opens stays as it was...
	if jailed.Cmdline != spec.Cmdline || jailed.ConsoleLog != spec.ConsoleLog || !reflect.DeepEqual(jailed.NICs, spec.NICs) ||
		!jailed.Drives[0].Root || !jailed.Drives[1].ReadOnly {
		t.Errorf("jailed spec changed more than paths: %+v", jailed)
	}
	// ...and the caller's spec is untouched.
	if spec.Drives[0].Path != "/var/lib/banger/vms/web1/root.img" {
		t.Error("stageFiles modified the caller's drives")
	}

	// Without initrd and guest channel there is nothing to stage for them.
	spec.Initrd, spec.GuestChannel = "", ""
	steps, jailed = stageFiles(l, spec)
	if len(steps) != 5 || jailed.Initrd != "" || jailed.GuestChannel != "" {
		t.Errorf("minimal plan: %+v / %+v", steps, jailed)
	}
}

func TestStageExecutesPlan(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(name), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	spec := vmm.Spec{
		Kernel: write("vmlinux", 0o644),
		Drives: []vmm.Drive{
			{ID: "root", Path: write("root.img", 0o600), Root: true},
			{ID: "seed", Path: write("seed.img", 0o644), ReadOnly: true},
		},
	}
	l, err := newJailLayout(JailerOptions{ChrootBase: filepath.Join(dir, "jail")}, "/usr/bin/firecracker", "web1")
	if err != nil {
		t.Fatal(err)
	}
	steps, _ := stageFiles(l, spec)
	if err := stage(l, steps, os.Getuid(), os.Getgid()); err != nil {
		t.Fatal(err)
	}
	for host, jp := range map[string]string{spec.Kernel: "/kernel", spec.Drives[0].Path: "/drive-root", spec.Drives[1].Path: "/drive-seed"} {
		a, _ := os.Stat(host)
		b, err := os.Stat(l.HostPath(jp))
		if err != nil || !os.SameFile(a, b) {
			t.Errorf("%s not hard linked to %s: %v", host, jp, err)
		}
	}
	if fi, err := os.Stat(l.HostPath("/run")); err != nil || !fi.IsDir() {
		t.Errorf("/run in jail: %v", err)
	}
	if fi, err := os.Stat(l.HostPath("/run/vmm.log")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("log file in jail: %v", err)
	}
	// Staging twice fails: the caller must remove a stale jail first.
	if err := stage(l, steps, os.Getuid(), os.Getgid()); err == nil {
		t.Error("staging over an existing jail succeeded")
	}
}

func TestCheckReadable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kernel")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	uid, gid := os.Getuid(), os.Getgid()
	if err := checkReadable(fi, p, uid, gid); err != nil {
		t.Errorf("owner can read 0600: %v", err)
	}
	if err := checkReadable(fi, p, uid+1, gid+1); err == nil || !strings.Contains(err.Error(), "not readable by the jail user") {
		t.Errorf("0600 file readable by another user? %v", err)
	}
	os.Chmod(p, 0o604)
	fi, _ = os.Stat(p)
	if err := checkReadable(fi, p, uid+1, gid+1); err != nil {
		t.Errorf("world-readable file: %v", err)
	}
}
