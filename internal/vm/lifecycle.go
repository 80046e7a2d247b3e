package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"banger/internal/agent"
	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/guest"
	"banger/internal/initrd"
	"banger/internal/kernel"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/vmm"
)

func (s *Service) backendFor(v store.VM) (disk.Backend, error) {
	b, ok := disk.Backends()[v.Root.Backend]
	if !ok {
		return nil, fmt.Errorf("vm %s: unknown root disk backend %q", v.Name, v.Root.Backend)
	}
	return b, nil
}

func (s *Service) driverFor(v store.VM) (vmm.Driver, error) {
	if v.Driver == s.Driver.Name() {
		return s.Driver, nil
	}
	return nil, fmt.Errorf("vm %s was created with the %s driver but the daemon runs %s (set vmm in config.toml)", v.Name, v.Driver, s.Driver.Name())
}

// modulesDevice is the guest device of the kernel modules image: the
// third drive, after the root (vda) and the work disk (vdb).
const modulesDevice = "/dev/vdc"

// cmdline is the guest kernel command line: the initramfs applies the
// banger.* settings to the VM's own root disk before switching to it, and
// mounts the modules image (drive 3) when the VM has one.
func (s *Service) cmdline(v store.VM, modules bool) string {
	gw := s.Net.Gateway()
	dns := s.Config.Network.DNS
	if dns == "" {
		dns = gw.String()
	}
	c := fmt.Sprintf("console=ttyS0 root=/dev/vda rw panic=-1 net.ifnames=0 banger.hostname=%s banger.ip=%s/%d banger.gw=%s banger.dns=%s banger.work=/dev/vdb",
		v.Name, v.IP, s.Net.CIDR.Bits(), gw, dns)
	if v.Driver == "firecracker" {
		// Firecracker has no virtio-serial: the agent serves vsock instead.
		c += fmt.Sprintf(" banger.agent_vsock=%d", agent.DefaultVsockPort)
	}
	if modules {
		c += " banger.modules=" + modulesDevice
	}
	return c
}

// boot runs the network, launch and wait stages. On failure it undoes what it
// did (VMM, tap, disk activation) and leaves v stopped.
func (s *Service) boot(ctx context.Context, v *store.VM, im store.Image, st *stages) (err error) {
	driver, err := s.driverFor(*v)
	if err != nil {
		return err
	}
	backend, err := s.backendFor(*v)
	if err != nil {
		return err
	}
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run(s.Log, v.Name)
			s.dropAgent(v.ID)
			v.State = api.StateStopped
			v.Handle = nil
			v.LastError = err.Error()
			v.Stages = st.list
			s.save(v)
		}
	}()
	if err := st.run(ctx, StageNetwork, func() error {
		if err := s.Host.EnsureBridge(ctx, s.Net.Bridge, s.Net.CIDR); err != nil {
			return err
		}
		undo.push("delete tap "+v.Tap, func(ctx context.Context) error { return s.Host.DeleteTap(ctx, v.Tap) })
		if !s.Taps.Take(v.Tap) {
			if err := s.Host.CreateTap(ctx, v.Tap, s.Net.Bridge); err != nil {
				return err
			}
		}
		if !s.Firewall {
			return nil
		}
		rules, err := firewallRules(*v)
		if err != nil {
			return err
		}
		undo.push("remove firewall rules", func(ctx context.Context) error { return s.Host.FirewallRemove(ctx, v.ID) })
		return s.Host.FirewallApply(ctx, rules)
	}); err != nil {
		return err
	}

	var m vmm.Machine
	var bf bootFiles
	if err := st.run(ctx, StageLaunch, func() error {
		dev, err := backend.Activate(ctx, v.Root)
		if err != nil {
			return err
		}
		undo.push("deactivate root disk", func(ctx context.Context) error { return backend.Deactivate(ctx, v.Root) })
		if bf, err = s.agentBoot(ctx, im, v); err != nil {
			return err
		}
		// An unprivileged daemon's VMM gets its tap as a descriptor from
		// the root helper (nil: the VMM opens it by name).
		tapFile, err := s.Host.OpenTap(ctx, v.Tap)
		if err != nil {
			return err
		}
		if tapFile != nil {
			defer tapFile.Close() // the VMM holds its own copy once started
		}
		spec := vmm.Spec{
			Name: v.Name, RunDir: v.Dir, Kernel: im.Kernel, Initrd: bf.Initrd, GuestChannel: bf.Channel,
			Cmdline: s.cmdline(*v, bf.Modules != ""), VCPU: v.VCPU, MemoryMiB: v.MemoryMiB, ConsoleLog: consoleLog(*v),
			Drives: bootDrives(dev, vmm.DiskFormat(v.Root.Format), v.WorkPath, bf.Modules),
			NICs:   []vmm.NIC{{ID: "net0", Tap: v.Tap, MAC: v.MAC, File: tapFile}},
		}
		m, err = driver.Start(ctx, spec)
		if err != nil {
			return err
		}
		undo.push("stop VMM", func(context.Context) error { return killMachine(m) })
		h := m.Handle()
		v.Handle = &h
		v.State = api.StateStarting
		v.LastError = ""
		return s.save(v)
	}); err != nil {
		return err
	}

	if err := st.run(ctx, StageWaitGuest, func() error {
		return s.waitGuest(ctx, v, m, bf.Channel)
	}); err != nil {
		return err
	}
	v.State = api.StateRunning
	v.StartedAt = nowUTC()
	v.Stages = st.list
	if err := s.save(v); err != nil {
		return err
	}
	s.setMachine(v.ID, m)
	s.watch(v.ID, m)
	if s.Names != nil {
		if ip, err := netip.ParseAddr(v.IP); err == nil {
			if err := s.Names.Set(v.Name, ip); err != nil {
				s.Log.Warn("dns record", "vm", v.Name, "err", err)
			}
		}
	}
	s.Log.Info("vm running", "vm", v.Name, "ip", v.IP, "pid", v.Handle.PID, "accel", v.Handle.Accel, "boot_id", v.BootID)
	return nil
}

// bootFiles are the host files a boot needs besides the kernel and disks.
type bootFiles struct {
	Initrd  string // initramfs ("" for none)
	Channel string // the agent's host socket ("" without an agent)
	Modules string // read-only ext4 image of the kernel's modules ("" for none)
}

// bootDrives are a VM's drives in guest order: root (vda), work disk (vdb)
// and, when the kernel has one, its modules image (vdc, read-only).
func bootDrives(root string, format vmm.DiskFormat, work, modules string) []vmm.Drive {
	d := []vmm.Drive{
		{ID: "root", Path: root, Format: format, Root: true},
		{ID: "work", Path: work, Format: vmm.FormatRaw},
	}
	if modules != "" {
		d = append(d, vmm.Drive{ID: "modules", Path: modules, Format: vmm.FormatRaw, ReadOnly: true})
	}
	return d
}

// agentBoot returns the initramfs to boot, the agent's host socket and the
// modules image. An image booting a kernel-store kernel gets banger's
// generated initramfs (banger-init, the kernel's virtio modules and the
// agent) and the kernel's modules image (built on first use for kernels
// imported before images existed); one with its own initramfs gets it
// with the agent appended (its init must start it) and no modules image;
// without an agent or an initramfs the image's own is used and Channel is "".
func (s *Service) agentBoot(ctx context.Context, im store.Image, v *store.VM) (bootFiles, error) {
	kname, err := s.Store.ImageKernel(ctx, im.Name)
	if err != nil {
		return bootFiles{}, err
	}
	var bf bootFiles
	if s.Agent != "" {
		bf.Channel = agentSocket(*v)
	}
	cache := filepath.Join(s.Paths.CacheDir, "initrd")
	if kname != "" {
		if s.Kernels == nil || s.Init == "" {
			return bootFiles{}, fmt.Errorf("image %s boots kernel %s, whose initramfs needs banger-init installed next to bangerd", im.Name, kname)
		}
		k, err := s.Kernels.Get(ctx, kname)
		if err != nil {
			return bootFiles{}, err
		}
		if bf.Initrd, err = kernel.Initramfs(k, cache, s.Init, s.Agent); err != nil {
			return bootFiles{}, fmt.Errorf("initramfs for kernel %s: %w", kname, err)
		}
		if bf.Modules, err = s.Kernels.ModulesImage(ctx, k); err != nil {
			return bootFiles{}, fmt.Errorf("modules image for kernel %s: %w", kname, err)
		}
		return bf, nil
	}
	if s.Agent == "" || im.Initrd == "" {
		return bootFiles{Initrd: im.Initrd}, nil
	}
	if bf.Initrd, err = initrd.WithAgent(cache, im.Initrd, s.Agent); err != nil {
		return bootFiles{}, fmt.Errorf("add the guest agent to %s: %w", im.Initrd, err)
	}
	return bf, nil
}

// waitGuest waits until the guest is ready — its agent answers when it has
// one (channel), else a real SSH handshake — and reads its boot_id. It gives
// up early, with the console's last lines, if the VMM exits.
func (s *Service) waitGuest(ctx context.Context, v *store.VM, m vmm.Machine, channel string) error {
	timeout, _ := s.Config.ReadyTimeout()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case <-m.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	var err error
	if channel != "" {
		v.BootID, err = s.agentBootID(ctx, v.ID, agentDialer(*v, channel))
	} else {
		v.BootID, err = s.sshBootID(ctx, v)
	}
	if err != nil {
		select {
		case <-m.Done():
			return fmt.Errorf("the VMM exited before the guest was ready; console log %s ends with:\n%s", consoleLog(*v), tail(consoleLog(*v), 15))
		default:
			return err
		}
	}
	return nil
}

// agentDialer reaches a VM's agent: QEMU exposes the virtio-serial port as a
// Unix socket; Firecracker's vsock socket needs its CONNECT handshake.
func agentDialer(v store.VM, channel string) agent.Dialer {
	if v.Driver == "firecracker" {
		return agent.FirecrackerDialer(channel, agent.DefaultVsockPort)
	}
	return agent.UnixDialer(channel)
}

// agentBootID waits for the guest's agent and reads its boot_id. The
// connection is kept as the VM's shared one, so the first exec does not
// pay for another handshake.
func (s *Service) agentBootID(ctx context.Context, id string, dial agent.Dialer) (string, error) {
	c, err := agent.DialWait(ctx, dial)
	if err != nil {
		return "", fmt.Errorf("guest agent did not answer: %w", err)
	}
	h, err := c.Health(ctx)
	if err != nil {
		c.Close()
		return "", fmt.Errorf("guest agent health: %w", err)
	}
	s.agentMu.Lock()
	old := s.agents[id]
	s.agents[id] = c
	s.agentMu.Unlock()
	if old != nil {
		old.Close()
	}
	return h.BootID, nil
}

func (s *Service) sshBootID(ctx context.Context, v *store.VM) (string, error) {
	c, err := s.Keys.WaitReady(ctx, v.Name, net.JoinHostPort(v.IP, "22"))
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.BootID(ctx)
}

func tail(path string, lines int) string {
	b, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

func killMachine(m vmm.Machine) error {
	defer m.Close()
	select {
	case <-m.Done():
		return nil
	default:
	}
	if err := m.Signal(syscall.SIGKILL); err != nil {
		select {
		case <-m.Done():
			return nil
		default:
			return err
		}
	}
	select {
	case <-m.Done():
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("VMM pid %d did not exit after SIGKILL", m.Handle().PID)
	}
}

// watch marks the VM stopped and releases its runtime resources when its VMM
// exits on its own (guest poweroff, crash). Lifecycle operations that stop a
// VM themselves clear the live machine first, so the watcher then does nothing.
func (s *Service) watch(id string, m vmm.Machine) {
	go func() {
		<-m.Done()
		unlock := s.mustLockVM(id)
		defer unlock()
		if s.machine(id) != m {
			return
		}
		s.setMachine(id, nil)
		m.Close()
		v, err := s.Store.GetVMByID(context.Background(), id)
		if err != nil {
			return
		}
		s.Log.Warn("VMM exited on its own", "vm", v.Name, "pid", m.Handle().PID)
		s.releaseRuntime(&v)
		v.LastError = "the VMM exited without a stop request (guest powered off or crashed); see `banger vm logs " + v.Name + "`"
		s.save(&v)
	}()
}

// releaseRuntime removes what only a running VM needs (tap, disk activation)
// and marks the row stopped.
func (s *Service) releaseRuntime(v *store.VM) error {
	s.dropAgent(v.ID)
	if s.Names != nil {
		s.Names.Remove(v.Name)
	}
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if s.Firewall {
		if err := s.Host.FirewallRemove(ctx, v.ID); err != nil {
			errs = append(errs, fmt.Errorf("firewall: %w", err))
		}
	}
	if err := s.Host.DeleteTap(ctx, v.Tap); err != nil {
		errs = append(errs, err)
	}
	if b, err := s.backendFor(*v); err == nil {
		errs = append(errs, b.Deactivate(ctx, v.Root))
	}
	v.State = api.StateStopped
	v.Handle = nil
	return errors.Join(errs...)
}

// Start boots a stopped VM.
func (s *Service) Start(ctx context.Context, name string, report Reporter) (api.VM, error) {
	v, unlock, err := s.getLocked(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if err := s.startLocked(ctx, &v, report); err != nil {
		return api.VM{}, err
	}
	return s.View(v), nil
}

func (s *Service) startLocked(ctx context.Context, v *store.VM, report Reporter) error {
	switch v.State {
	case api.StateRunning:
		return rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s is already running", v.Name)
	case api.StateStopped:
	default:
		return rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s is %s; wait for it to finish", v.Name, v.State)
	}
	if err := s.preflight(ctx); err != nil {
		return err
	}
	im, err := s.Store.GetImage(ctx, v.Image)
	if err != nil {
		return err
	}
	st := newStages(v.Name, s.Log, report)
	if err := st.run(ctx, StagePrepareDisks, func() error {
		// Refresh the daemon's key in /root (the user may have replaced it).
		return disk.WriteFiles(ctx, v.WorkPath, s.guestFiles())
	}); err != nil {
		return err
	}
	return s.boot(ctx, v, im, st)
}

// Stop shuts the guest down gracefully: it flushes and powers off through
// SSH (or ACPI when SSH does not answer); after the timeout the VMM is told
// to quit and then killed.
func (s *Service) Stop(ctx context.Context, p api.VMStopParams) (api.VM, error) {
	v, unlock, err := s.getLocked(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	timeout := 60 * time.Second
	if p.TimeoutSeconds > 0 {
		timeout = time.Duration(p.TimeoutSeconds) * time.Second
	}
	if err := s.stopLocked(ctx, &v, timeout); err != nil {
		return api.VM{}, err
	}
	return s.View(v), nil
}

func (s *Service) stopLocked(ctx context.Context, v *store.VM, timeout time.Duration) error {
	m := s.machine(v.ID)
	if v.State == api.StateStopped || m == nil {
		if v.State != api.StateStopped {
			return rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s is %s", v.Name, v.State)
		}
		return nil
	}
	v.State = api.StateStopping
	s.save(v)
	s.setMachine(v.ID, nil) // the watcher must not race us
	how := s.shutdownGuest(ctx, v, m, timeout)
	m.Close()
	s.Log.Info("vm stopped", "vm", v.Name, "how", how)
	v.LastError = ""
	err := s.releaseRuntime(v)
	s.save(v)
	return err
}

// shutdownGuest powers the guest off and waits for the VMM to exit,
// escalating to QMP quit and then SIGKILL. It returns how the VM stopped.
func (s *Service) shutdownGuest(ctx context.Context, v *store.VM, m vmm.Machine, timeout time.Duration) string {
	wait := func(d time.Duration) bool {
		select {
		case <-m.Done():
			return true
		case <-time.After(d):
			return false
		}
	}
	via := "agent"
	switch {
	case s.poweroffViaAgent(ctx, v):
	case s.poweroffViaSSH(ctx, v):
		via = "ssh"
	default:
		via = "ctrl-alt-del"
		_ = m.CtrlAltDel(ctx)
	}
	s.Log.Info("guest asked to power off", "vm", v.Name, "via", via)
	if wait(timeout) {
		return "guest powered off"
	}
	s.Log.Warn("guest did not power off in time; quitting VMM", "vm", v.Name, "timeout", timeout)
	qctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = m.Quit(qctx)
	cancel()
	if wait(5 * time.Second) {
		return "VMM quit after timeout"
	}
	_ = killMachine(m)
	return "VMM killed after timeout"
}

// poweroffCmd asks the guest to flush and power off; --no-block returns
// before the services (sshd, the agent) are stopped. Without systemd,
// poweroff (busybox's signals PID 1 with SIGUSR2); in an image without a
// poweroff program, SIGUSR2 to banger-init as PID 1 does the same.
var poweroffCmd = []string{"sh", "-c", "sync; systemctl poweroff --no-block 2>/dev/null || poweroff 2>/dev/null || kill -USR2 1"}

// poweroffViaAgent asks a guest with the agent to power off, reporting
// whether it was asked. (v is already marked stopping.)
func (s *Service) poweroffViaAgent(ctx context.Context, v *store.VM) bool {
	if !bootedWithAgent(*v) {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := s.agentClient(ctx, *v)
	if err == nil {
		_, err = c.Exec(ctx, agent.ExecRequest{Argv: poweroffCmd}, nil, io.Discard, io.Discard, nil)
	}
	if err != nil {
		s.Log.Warn("poweroff through the agent failed; trying ssh", "vm", v.Name, "err", err)
		return false
	}
	return true
}

// poweroffViaSSH asks the guest to power off over SSH, reporting whether it
// was asked.
func (s *Service) poweroffViaSSH(ctx context.Context, v *store.VM) bool {
	c, err := s.Keys.Dial(ctx, v.Name, net.JoinHostPort(v.IP, "22"), 10*time.Second)
	if err != nil {
		s.Log.Warn("guest not reachable over ssh; using ACPI power button", "vm", v.Name, "err", err)
		return false
	}
	defer c.Close()
	if _, err := c.Run(ctx, guest.ShellJoin(poweroffCmd)); err != nil {
		s.Log.Warn("poweroff over ssh failed", "vm", v.Name, "err", err)
		return false
	}
	return true
}

// Restart stops and starts a VM; the guest gets a new boot_id.
func (s *Service) Restart(ctx context.Context, name string, report Reporter) (api.VM, error) {
	v, unlock, err := s.getLocked(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if err := s.stopLocked(ctx, &v, 60*time.Second); err != nil {
		return api.VM{}, err
	}
	if err := s.startLocked(ctx, &v, report); err != nil {
		return api.VM{}, err
	}
	return s.View(v), nil
}

var signals = map[string]syscall.Signal{
	"KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP,
	"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
}

// ParseSignal accepts "KILL", "SIGKILL", "kill" or "9" for the allowed signals.
func ParseSignal(s string) (syscall.Signal, error) {
	if s == "" {
		return syscall.SIGKILL, nil
	}
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig, ok := signals[name]; ok {
		return sig, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		for _, sig := range signals {
			if int(sig) == n {
				return sig, nil
			}
		}
	}
	return 0, invalid("signal %q is not allowed; use one of KILL, TERM, INT, HUP, QUIT, USR1, USR2", s)
}

// Kill sends a signal to the VMM at once (default SIGKILL).
func (s *Service) Kill(ctx context.Context, p api.VMKillParams) (api.VM, error) {
	sig, err := ParseSignal(p.Signal)
	if err != nil {
		return api.VM{}, err
	}
	v, unlock, err := s.getLocked(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	m := s.machine(v.ID)
	if m == nil {
		return api.VM{}, rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s is not running", v.Name)
	}
	if err := m.Signal(sig); err != nil {
		return api.VM{}, fmt.Errorf("signal vm %s: %w", v.Name, err)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		return s.View(v), nil // delivered; the watcher cleans up if it exits later
	}
	s.setMachine(v.ID, nil)
	m.Close()
	err = s.releaseRuntime(&v)
	v.LastError = ""
	s.save(&v)
	s.Log.Info("vm killed", "vm", v.Name, "signal", sig.String())
	return s.View(v), err
}
