package bootinit

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AgentRestartDelay is how long banger mode waits before restarting an
// agent that exited (the systemd unit's RestartSec).
const AgentRestartDelay = 200 * time.Millisecond

// shutdownGrace is how long processes get between SIGTERM and SIGKILL.
const shutdownGrace = 3 * time.Second

// guestEnv is the environment of the processes banger-init starts.
var guestEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root", "TERM=linux",
}

// guestInit is banger mode: banger-init, in the switched root, is the
// guest's init. It never returns.
func guestInit(c Config, nic string, hasAgent bool) {
	for _, m := range []struct {
		src, dir, fs string
		flags        uintptr
		data         string
	}{
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666,gid=5"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	} {
		if m.dir == "/run" && hasAgent {
			continue // already a tmpfs, holding the agent
		}
		if err := mount(m.src, m.dir, m.fs, m.flags, m.data); err != nil {
			logf("warning: %v", err)
		}
	}
	for link, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		os.Symlink(target, link) // exists already: fine
	}
	if c.Hostname != "" {
		if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
			logf("warning: sethostname: %v", err)
		}
	}
	if err := configureNetwork(c, nic); err != nil {
		logf("warning: network: %v", err)
	}
	// Ctrl-Alt-Del sends SIGINT to init instead of rebooting at once.
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)

	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGPWR, unix.SIGUSR1, unix.SIGUSR2, unix.SIGHUP)

	var agentPID int
	restart := make(chan struct{}, 1)
	startAgent := func() {
		pid, err := startProcess("/run/banger/banger-agent", agentArgs(c))
		if err != nil {
			logf("warning: start the agent: %v (retrying)", err)
			time.AfterFunc(AgentRestartDelay, func() { restart <- struct{}{} })
			return
		}
		agentPID = pid
	}
	if hasAgent {
		startAgent()
	} else {
		logf("warning: no guest agent in the initramfs")
	}
	logf("guest init ready")
	for {
		select {
		case <-restart:
			startAgent()
		case sig := <-sigs:
			switch sig {
			case unix.SIGCHLD:
				for _, pid := range reap() {
					if pid == agentPID {
						agentPID = 0
						logf("agent exited; restarting it in %s", AgentRestartDelay)
						time.AfterFunc(AgentRestartDelay, func() { restart <- struct{}{} })
					}
				}
			case unix.SIGHUP:
			default:
				shutdown(sig.(syscall.Signal))
			}
		}
	}
}

// startProcess starts argv[0] as a child with the console as stdio, in its
// own session. Its exit is collected by reap.
func startProcess(path string, args []string) (int, error) {
	attr := &os.ProcAttr{
		Dir:   "/",
		Env:   guestEnv,
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	p, err := os.StartProcess(path, append([]string{path}, args...), attr)
	if err != nil {
		return 0, err
	}
	pid := p.Pid
	p.Release()
	return pid, nil
}

// reap collects every exited child (orphans included) without blocking.
func reap() []int {
	var pids []int
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return pids
		}
		pids = append(pids, pid)
	}
}

// configureNetwork brings up lo and the NIC with banger.ip and a default
// route through banger.gw (netlink; there is no DHCP client in this mode).
func configureNetwork(c Config, nic string) error {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	if nic == "" {
		nic, _ = firstNIC("/sys/class/net")
	}
	if nic == "" {
		return errors.New("no ethernet NIC")
	}
	link, err := netlink.LinkByName(nic)
	if err != nil {
		return fmt.Errorf("%s: %w", nic, err)
	}
	if c.IP.IsValid() {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: c.IP.Addr().AsSlice(), Mask: net.CIDRMask(c.IP.Bits(), 32)}}
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("address %s on %s: %w", c.IP, nic, err)
		}
	} else {
		logf("warning: no banger.ip: %s is up without an address (no DHCP client in banger mode)", nic)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", nic, err)
	}
	if c.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: c.Gateway.AsSlice()}
		if err := netlink.RouteAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("default route via %s: %w", c.Gateway, err)
		}
	}
	logf("network: %s %s gw %s", nic, c.IP, c.Gateway)
	return nil
}

// shutdown stops every process (SIGTERM, then SIGKILL after a grace
// period), unmounts, and powers off.
func shutdown(sig syscall.Signal) {
	logf("%s: stopping all processes and powering off", unix.SignalName(sig))
	unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(shutdownGrace)
	for time.Now().Before(deadline) {
		reap()
		if err := unix.Kill(-1, 0); errors.Is(err, unix.ESRCH) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	unix.Kill(-1, unix.SIGKILL)
	for i := 0; i < 50; i++ {
		reap()
		if err := unix.Kill(-1, 0); errors.Is(err, unix.ESRCH) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	unix.Sync()
	unmountAll()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		logf("warning: remount / read-only: %v", err)
	}
	powerOff()
}

// unmountAll unmounts every mount but /, /proc, /sys and /dev, newest first.
func unmountAll() {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return
	}
	var targets []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 1 {
			targets = append(targets, strings.ReplaceAll(fs[1], `\040`, " "))
		}
	}
	f.Close()
	for i := len(targets) - 1; i >= 0; i-- {
		switch t := targets[i]; t {
		case "/", "/proc", "/sys", "/dev":
		default:
			if err := unix.Unmount(t, 0); err != nil {
				logf("warning: unmount %s: %v; detaching it", t, err)
				unix.Unmount(t, unix.MNT_DETACH)
			}
		}
	}
}
