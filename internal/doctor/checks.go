package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Checks returns every check, in display order.
func Checks() []Check {
	return []Check{
		{Name: "arch", Run: checkArch},
		{Name: "config", Run: checkConfig},
		{Name: "qemu", Run: checkQEMU},
		// The KVM probe boots a kernel for up to 8 s.
		{Name: "accelerator", Timeout: 20 * time.Second, Run: checkAccel},
		{Name: "firecracker", Run: checkFirecracker},
		{Name: "vmm", Run: checkVMM},
		{Name: "qemu-img", Run: checkQEMUImg},
		{Name: "mkfs.ext4", Run: checkMkfs},
		{Name: "device-mapper", Run: checkDM},
		{Name: "loop", Run: checkLoop},
		{Name: "tun", Run: checkTun},
		{Name: "nftables", Run: checkNftables},
		{Name: "network", Run: checkNetwork},
		{Name: "dns-routing", Run: checkDNSRouting},
		{Name: "disk-space", Run: checkDiskSpace},
		{Name: "store", Run: checkStore},
		{Name: "default-image", Run: checkDefaultImage},
		{Name: "ssh-key", Run: checkSSHKey},
		{Name: "daemon", Timeout: 5 * time.Second, Run: checkDaemon},
		{Name: "bangerd", Run: checkBangerd},
		{Name: "root-helper", Timeout: 5 * time.Second, Run: checkRootHelper},
		{Name: "ssh", Run: checkSSH},
		{Name: "ssh-config", Run: checkSSHConfig},
		{Name: "git", Run: checkGit},
	}
}

const apt = "apt-get install "

// version runs bin with args and returns the first non-empty line of its
// combined output.
func version(ctx context.Context, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	line := firstLine(out.String())
	if err != nil {
		if line != "" {
			return "", fmt.Errorf("%s %s: %v: %s", bin, strings.Join(args, " "), err, line)
		}
		return "", fmt.Errorf("%s %s: %v", bin, strings.Join(args, " "), err)
	}
	return line, nil
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

func checkArch(_ context.Context, _ Env) Result {
	machine := "unknown"
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		machine = unix.ByteSliceToString(u.Machine[:])
	}
	ev := fmt.Sprintf("%s/%s (kernel machine %s)", runtime.GOOS, runtime.GOARCH, machine)
	if runtime.GOOS == "linux" && runtime.GOARCH == "amd64" && machine == "x86_64" {
		return pass(ev)
	}
	return fail(ev+": banger runs x86_64 guests on x86_64 Linux hosts only",
		"run banger on an x86_64 (amd64) Linux host with an amd64 build of banger")
}

// checkQEMU: the QEMU binary, its version and the microvm machine type.
func checkQEMU(ctx context.Context, env Env) Result {
	cfg := env.cfg()
	bin := cfg.QEMU.Binary
	p, err := env.lookPath(bin)
	if err != nil {
		remedy := apt + "qemu-system-x86"
		if bin != "qemu-system-x86_64" {
			remedy += fmt.Sprintf(" (or fix qemu.binary = %q in %s)", bin, env.ConfigPath)
		}
		return fail(bin+" not found in PATH (QEMU is banger's VMM)", remedy)
	}
	v, err := version(ctx, p, "--version")
	if err != nil {
		return fail(err.Error(), apt+"--reinstall qemu-system-x86")
	}
	machines, err := exec.CommandContext(ctx, p, "-machine", "help").CombinedOutput()
	if err != nil {
		return fail(fmt.Sprintf("%s -machine help: %v", p, err), apt+"--reinstall qemu-system-x86")
	}
	if !bytes.Contains(machines, []byte("microvm")) {
		return fail(fmt.Sprintf("%s (%s) has no microvm machine type", v, p),
			apt+"qemu-system-x86 (QEMU >= 4.2 with microvm support)")
	}
	return pass(fmt.Sprintf("%s (%s, microvm machine available)", v, p))
}

// checkQEMUImg: qemu-img makes qcow2 overlay root disks.
func checkQEMUImg(ctx context.Context, env Env) Result {
	p, err := env.lookPath("qemu-img")
	if err != nil {
		ev := "qemu-img not found in PATH: qcow2 overlay root disks are unavailable (roots fall back to reflink or full copies)"
		if env.cfg().Disk.Backend == "qcow2" {
			return fail("disk.backend = \"qcow2\" but qemu-img is not found in PATH", apt+"qemu-utils")
		}
		return warn(ev, apt+"qemu-utils")
	}
	v, err := version(ctx, p, "--version")
	if err != nil {
		return warn(err.Error(), apt+"--reinstall qemu-utils")
	}
	return pass(fmt.Sprintf("%s (%s)", v, p))
}

// checkMkfs: work disks are made with mkfs.ext4 -d, grown with e2fsck and
// resize2fs, and edited with debugfs; all come with e2fsprogs.
func checkMkfs(ctx context.Context, env Env) Result {
	var missing, found []string
	mkfs := ""
	for _, t := range []string{"mkfs.ext4", "e2fsck", "resize2fs", "debugfs"} {
		p, err := env.lookPath(t)
		if err != nil {
			missing = append(missing, t)
			continue
		}
		if t == "mkfs.ext4" {
			mkfs = p
		} else {
			found = append(found, t)
		}
	}
	if len(missing) > 0 {
		return fail("not found in PATH: "+strings.Join(missing, ", ")+" (needed to make and grow VM disks)", apt+"e2fsprogs")
	}
	v, err := version(ctx, mkfs, "-V")
	if err != nil {
		return fail(err.Error(), apt+"--reinstall e2fsprogs")
	}
	return pass(fmt.Sprintf("%s (%s; %s present)", v, mkfs, strings.Join(found, ", ")))
}

const mapperControl = "/dev/mapper/control"

// openDev opens a character device read-write (which changes nothing) and
// returns the reason it cannot be opened.
func openDev(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}

// checkDM: device-mapper snapshots are the Firecracker root disks of choice.
func checkDM(ctx context.Context, env Env) Result {
	backend := env.cfg().Disk.Backend
	if err := openDev(mapperControl); err != nil {
		ev := fmt.Sprintf("device-mapper unavailable (%v); qcow2/reflink root disks are used", err)
		if backend == "dm" {
			return fail(fmt.Sprintf("disk.backend = \"dm\" but device-mapper is unavailable (%v)", err),
				fmt.Sprintf("set disk.backend = \"auto\" in %s", env.ConfigPath))
		}
		remedy := "none needed (banger picks another root disk backend); for dm snapshots use a kernel with CONFIG_DM_SNAPSHOT and " + apt + "dmsetup"
		if errors.Is(err, fs.ErrPermission) {
			remedy = "run bangerd as root to use device-mapper (none needed otherwise: banger picks another root disk backend)"
		}
		return warn(ev, remedy)
	}
	p, err := env.lookPath("dmsetup")
	if err != nil {
		if backend == "dm" {
			return fail("disk.backend = \"dm\" but dmsetup is not found in PATH", apt+"dmsetup")
		}
		return warn(mapperControl+" opens but dmsetup is not found in PATH; dm root disks are unavailable", apt+"dmsetup")
	}
	v, err := version(ctx, p, "version")
	if err != nil {
		v = p
	}
	return pass(fmt.Sprintf("%s opens; %s", mapperControl, v))
}

// checkLoop: loop devices back device-mapper root disks.
func checkLoop(_ context.Context, env Env) Result {
	if err := openDev("/dev/loop-control"); err != nil {
		return warn(fmt.Sprintf("loop devices unavailable (%v); device-mapper root disks cannot be used", err),
			"none needed unless disk.backend = \"dm\"; otherwise use a kernel with CONFIG_BLK_DEV_LOOP (modprobe loop)")
	}
	p, err := env.lookPath("losetup")
	if err != nil {
		return warn("/dev/loop-control opens but losetup is not found in PATH", apt+"mount")
	}
	return pass("/dev/loop-control opens; losetup at " + p)
}

// checkBangerd: the CLI starts bangerd from next to itself (or PATH), and
// bangerd puts banger-agent and banger-init (next to it) into guests.
func checkBangerd(_ context.Context, env Env) Result {
	var bangerd string
	if env.Executable != "" {
		p := filepath.Join(filepath.Dir(env.Executable), "bangerd")
		if executable(p) == nil {
			bangerd = p
		}
	}
	if bangerd == "" {
		if p, err := env.lookPath("bangerd"); err == nil {
			bangerd = p
		}
	}
	if bangerd == "" {
		return fail("bangerd not found next to "+env.Executable+" or in PATH; banger cannot start its daemon",
			"install bangerd, banger-agent and banger-init next to banger (from the source tree: go build -o bin/ ./cmd/banger ./cmd/bangerd && CGO_ENABLED=0 go build -o bin/ ./cmd/banger-agent ./cmd/banger-init)")
	}
	agent := filepath.Join(filepath.Dir(bangerd), "banger-agent")
	if executable(agent) != nil {
		return warn(bangerd+" found but "+agent+" is missing: guests get no agent and readiness falls back to SSH",
			"install banger-agent next to bangerd (from the source tree: CGO_ENABLED=0 go build -o "+filepath.Dir(bangerd)+"/ ./cmd/banger-agent)")
	}
	init := filepath.Join(filepath.Dir(bangerd), "banger-init")
	if executable(init) != nil {
		return warn(bangerd+" found but "+init+" is missing: images using a kernel from the kernel store cannot boot",
			"install banger-init next to bangerd (from the source tree: CGO_ENABLED=0 go build -o "+filepath.Dir(bangerd)+"/ ./cmd/banger-init)")
	}
	return pass(bangerd + ", " + agent + " and " + init)
}

// checkSSH: `banger vm ssh` and `ssh NAME.vm` run the system OpenSSH client.
func checkSSH(ctx context.Context, env Env) Result {
	p, err := env.lookPath("ssh")
	if err != nil {
		return fail("ssh not found in PATH: `banger vm ssh` needs the OpenSSH client", apt+"openssh-client")
	}
	v, err := version(ctx, p, "-V")
	if err != nil {
		return warn(err.Error(), apt+"--reinstall openssh-client")
	}
	return pass(fmt.Sprintf("%s (%s)", v, p))
}

// checkGit: `vm run PATH` and workspaces copy git work trees with git.
func checkGit(ctx context.Context, env Env) Result {
	p, err := env.lookPath("git")
	if err != nil {
		return warn("git not found in PATH: `banger vm run PATH` copies plain directories only and workspace export is unavailable", apt+"git")
	}
	v, err := version(ctx, p, "--version")
	if err != nil {
		return warn(err.Error(), apt+"--reinstall git")
	}
	return pass(fmt.Sprintf("%s (%s)", v, p))
}

// checkDiskSpace: VM disks live in the state directory.
func checkDiskSpace(_ context.Context, env Env) Result {
	dir := env.Layout.StateDir
	at := dir
	// The state directory may not exist yet: measure where it will be.
	for {
		if _, err := os.Stat(at); err == nil {
			break
		}
		parent := filepath.Dir(at)
		if parent == at {
			break
		}
		at = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(at, &st); err != nil {
		return fail(fmt.Sprintf("statfs %s: %v", at, err), "make "+dir+" (or its parent) reachable")
	}
	free := int64(st.Bavail) * st.Bsize
	where := dir
	if at != dir {
		where = fmt.Sprintf("%s (not created yet; measured at %s)", dir, at)
	}
	ev := fmt.Sprintf("%s free for %s", gib(free), where)
	remedy := fmt.Sprintf("free space on the filesystem of %s (e.g. `banger vm prune`), or move the state directory with XDG_STATE_HOME", at)
	switch {
	case free < 1<<30:
		return fail(ev+": less than 1 GiB", remedy)
	case free < 5<<30:
		return warn(ev+": less than 5 GiB (one VM needs its work disk plus root disk changes)", remedy)
	}
	return pass(ev)
}

func gib(n int64) string { return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30)) }
