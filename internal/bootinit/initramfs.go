package bootinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Paths inside the initramfs.
const (
	NewRoot     = "/newroot"
	ModulesList = "/etc/banger-modules" // module files, relative to /lib/modules/RELEASE, in load order
	rootWait    = 10 * time.Second
	workWait    = 3 * time.Second
)

// Run is PID 1 of the initramfs. It never returns: it execs the root's
// init, becomes the guest's init, or powers the machine off.
func Run() {
	var mounted []string
	die := func(format string, a ...any) { fatal(mounted, format, a...) }

	for _, m := range []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := mount(m.src, m.dir, m.fs, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			die("%v", err)
		}
	}
	useConsole()

	var uts unix.Utsname
	unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	n, err := loadModules(ModulesList, filepath.Join("/lib/modules", release))
	if err != nil {
		die("modules: %v", err)
	}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		die("read /proc/cmdline: %v", err)
	}
	c, err := Parse(string(b))
	if err != nil {
		die("%v", err)
	}
	logf("kernel %s, %d modules loaded", release, n)

	// --- root filesystem
	rootdev, err := waitDevice(c.Root, rootWait)
	if err != nil {
		die("root device %v", err)
	}
	flags, data := mountOptions(c.RootFlags)
	if err := mount(rootdev, NewRoot, c.RootFSType, flags, data); err != nil {
		die("cannot mount root: %v", err)
	}
	mounted = append(mounted, NewRoot)
	bangerMode, why, err := chooseMode(NewRoot, c)
	if err != nil {
		die("%v", err)
	}

	// --- per-VM settings
	nic, mac := firstNIC("/sys/class/net")
	if err := applySettings(NewRoot, c, !bangerMode, mac); err != nil {
		die("%v", err)
	}

	// --- work disk on /root
	if c.Work != "" {
		if dev, err := waitDevice(c.Work, workWait); err != nil {
			logf("warning: work disk %v; /root is the image's own", err)
		} else {
			if err := mount(dev, NewRoot+"/root", "ext4", 0, ""); err != nil {
				die("cannot mount the work disk: %v", err)
			}
			mounted = append(mounted, NewRoot+"/root")
			os.Chmod(NewRoot+"/root", 0o700)
		}
	}

	// --- the kernel's modules, read-only on /lib/modules/RELEASE
	if c.Modules != "" {
		if target, err := mountModules(NewRoot, c.Modules, release); err != nil {
			logf("warning: kernel modules image: %v; modprobe will not find the modules of %s", err, release)
		} else {
			mounted = append(mounted, target)
		}
	}

	// --- the guest agent, from a tmpfs /run (nothing is written to a disk)
	hasAgent := false
	if st, err := os.Stat(AgentPath); err == nil && st.Mode().IsRegular() {
		if err := installAgent(NewRoot, c, !bangerMode); err != nil {
			die("guest agent: %v", err)
		}
		mounted = append(mounted, NewRoot+"/run")
		hasAgent = true
	}

	// --- switch root
	if bangerMode {
		logf("banger mode (%s): banger-init stays PID 1", why)
		if err := switchRoot([]string{"/dev", "/proc", "/sys"}); err != nil {
			die("switch root: %v", err)
		}
		guestInit(c, nic, hasAgent) // never returns
	}
	unix.Unmount("/proc", 0)
	unix.Unmount("/sys", 0)
	if err := switchRoot([]string{"/dev"}); err != nil {
		die("switch root: %v", err)
	}
	err = unix.Exec(c.Init, []string{c.Init}, os.Environ())
	// The root is switched: nothing of ours to unmount safely any more.
	fatal(nil, "exec %s: %v", c.Init, err)
}

// mountOptions splits rw,noatime,... into mount flags and filesystem data.
func mountOptions(opts string) (uintptr, string) {
	known := map[string]uintptr{
		"ro": unix.MS_RDONLY, "rw": 0, "noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME,
		"relatime": unix.MS_RELATIME, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV,
		"noexec": unix.MS_NOEXEC, "sync": unix.MS_SYNCHRONOUS, "lazytime": unix.MS_LAZYTIME,
	}
	var flags uintptr
	var data []string
	for _, o := range strings.Split(opts, ",") {
		if o == "" {
			continue
		}
		if f, ok := known[o]; ok {
			flags |= f
		} else {
			data = append(data, o)
		}
	}
	return flags, strings.Join(data, ",")
}

// chooseMode decides, for the root mounted at root, whether banger-init
// stays the guest's init (and why) or hands over to the root's init.
func chooseMode(root string, c Config) (banger bool, why string, err error) {
	if c.ForceInit {
		return true, "banger.init=banger", nil
	}
	target, err := resolveIn(root, c.Init)
	if err == nil {
		var st os.FileInfo
		if st, err = os.Stat(filepath.Join(root, target)); err == nil && (!st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0) {
			err = fmt.Errorf("not an executable file")
		}
	}
	if err != nil {
		if c.InitGiven {
			return false, "", fmt.Errorf("init %s not usable on the root filesystem: %v", c.Init, err)
		}
		return true, "no usable " + c.Init + " on the root filesystem", nil
	}
	if c.InitGiven || filepath.Base(target) == "systemd" {
		return false, "", nil
	}
	return true, c.Init + " is " + target + ", not systemd", nil
}

// resolveIn resolves p inside root as if root were /, following symlinks in
// every component (absolute links stay inside root).
func resolveIn(root, p string) (string, error) {
	parts := strings.Split(p, "/")
	cur := "/"
	for hops := 0; len(parts) > 0; {
		part := parts[0]
		parts = parts[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, part)
		st, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if st.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		t, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(t, "/") {
			cur = "/"
		}
		parts = append(strings.Split(t, "/"), parts...)
	}
	return cur, nil
}

// applySettings writes the per-VM files into the root at root.
func applySettings(root string, c Config, systemd bool, mac string) error {
	if c.Hostname != "" {
		if err := putFile(root, "/etc/hostname", []byte(c.Hostname+"\n"), 0o644); err != nil {
			return err
		}
		old, _ := os.ReadFile(filepath.Join(root, "/etc/hosts"))
		if err := putFile(root, "/etc/hosts", hostsFile(old, c.Hostname), 0o644); err != nil {
			return err
		}
	}
	if systemd {
		if mac == "" {
			logf("warning: no ethernet NIC found yet; matching Name=eth0")
		}
		if err := putFile(root, "/etc/systemd/network/10-banger.network", networkdFile(c, mac), 0o644); err != nil {
			return err
		}
	}
	if c.DNS.IsValid() {
		if err := putFile(root, "/etc/resolv.conf", []byte("nameserver "+c.DNS.String()+"\n"), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// installAgent mounts a tmpfs on root/run and copies the agent there; for
// systemd it adds a unit that starts it early (systemd adopts a /run that
// is already a mount point as is).
func installAgent(root string, c Config, systemd bool) error {
	run := filepath.Join(root, "run")
	if err := mount("tmpfs", run, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(run, "banger"), 0o755); err != nil {
		return err
	}
	agent, err := os.ReadFile(AgentPath)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(run, "banger/banger-agent"), agent, 0o755); err != nil {
		return err
	}
	if !systemd {
		return nil
	}
	wants := filepath.Join(run, "systemd/system/sysinit.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(run, "systemd/system/banger-agent.service"), []byte(agentUnit), 0o644); err != nil {
		return err
	}
	if args := agentArgs(c); len(args) > 0 {
		env := "BANGER_AGENT_ARGS=" + strings.Join(args, " ") + "\n"
		if err := os.WriteFile(filepath.Join(run, "banger/agent.env"), []byte(env), 0o644); err != nil {
			return err
		}
	}
	return os.Symlink("../banger-agent.service", filepath.Join(wants, "banger-agent.service"))
}

// switchRoot moves the given mounts into NewRoot, frees the initramfs and
// makes NewRoot the root (what busybox switch_root does).
func switchRoot(move []string) error {
	for _, m := range move {
		if err := os.MkdirAll(NewRoot+m, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m, NewRoot+m, "", unix.MS_MOVE, ""); err != nil {
			logf("warning: move %s: %v; detaching it", m, err)
			unix.Unmount(m, unix.MNT_DETACH)
		}
	}
	freeInitramfs()
	if err := unix.Chdir(NewRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", NewRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	return unix.Chdir("/")
}

// freeInitramfs deletes the initramfs' files (its memory is not given back
// otherwise), staying on its own filesystem and only if / is a ram
// filesystem.
func freeInitramfs() {
	var sfs unix.Statfs_t
	if err := unix.Statfs("/", &sfs); err != nil || (sfs.Type != unix.RAMFS_MAGIC && sfs.Type != unix.TMPFS_MAGIC) {
		return
	}
	var root unix.Stat_t
	if unix.Lstat("/", &root) != nil {
		return
	}
	ents, _ := os.ReadDir("/")
	for _, e := range ents {
		p := "/" + e.Name()
		var st unix.Stat_t
		if p == NewRoot || unix.Lstat(p, &st) != nil || st.Dev != root.Dev {
			continue
		}
		removeSameDev(p, root.Dev)
	}
}

func removeSameDev(p string, dev uint64) {
	var st unix.Stat_t
	if unix.Lstat(p, &st) != nil || st.Dev != dev {
		return
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			removeSameDev(filepath.Join(p, e.Name()), dev)
		}
		unix.Rmdir(p)
		return
	}
	unix.Unlink(p)
}
