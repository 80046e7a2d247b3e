// Package daemon is bangerd's composition root: it loads the config, opens
// the store, picks the VMM driver and root disk backend, wires the services,
// reconciles VMs left by an earlier daemon, and serves the RPC dispatch table
// (handlers.go) on the Unix socket. Stopping the daemon never stops VMs.
//
// Root-only work (bridge, taps, nftables, port 53) goes through
// privileged.Ops (chooseHost): in-process when bangerd runs as root, else
// the root helper bangerd-root, whose socket is $BANGER_ROOT_HELPER or the
// one in its installed policy; the daemon refuses to start when the helper
// does not answer.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/disk"
	"banger/internal/dnsserver"
	"banger/internal/doctor"
	"banger/internal/guest"
	"banger/internal/hostnet"
	"banger/internal/kernel"
	"banger/internal/netfilter"
	"banger/internal/paths"
	"banger/internal/privileged"
	"banger/internal/resolved"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vmm"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
)

// Options are bangerd's command-line settings.
type Options struct {
	System bool
	// LogStderr also writes the log to stderr (foreground runs).
	LogStderr bool
}

// Daemon is a running bangerd.
type Daemon struct {
	paths   paths.Layout
	cfg     config.Config
	log     *slog.Logger
	store   *store.Store
	vms     *vm.Service
	kernels *kernel.Store
	driver  vmm.Driver
	dns     *dnsserver.Server // nil when off or failed to start
	fw      *netfilter.Manager
	taps    *hostnet.TapPool
	host    privileged.Ops // root-only work: in-process as root, else the root helper
	netCfg  hostnet.Config
	server  *rpc.Server
	started time.Time
	status  api.DaemonStatus
	stop    chan struct{}
}

// Run starts the daemon and serves until SIGTERM/SIGINT or daemon.stop.
func Run(o Options) error {
	l, err := paths.Resolve(o.System)
	if err != nil {
		return err
	}
	if err := l.Ensure(); err != nil {
		return err
	}
	cfg, err := config.Load(l.ConfigFile())
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(l.DaemonLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	var w io.Writer = logf
	if o.LogStderr {
		w = io.MultiWriter(logf, os.Stderr)
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))

	d := &Daemon{paths: l, cfg: cfg, log: log, started: time.Now().UTC(), stop: make(chan struct{})}
	ctx := context.Background()
	ln, err := rpc.ListenUnix(l.Socket())
	if err != nil {
		return err
	}
	if err := d.init(ctx); err != nil {
		ln.Close()
		return err
	}
	defer d.store.Close()
	os.WriteFile(l.PIDFile(), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
	defer os.Remove(l.PIDFile())

	d.server = rpc.NewServer(log)
	d.register()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case s := <-sigs:
			log.Info("signal received; shutting down (VMs keep running)", "signal", s.String())
		case <-d.stop:
			log.Info("daemon.stop requested; shutting down (VMs keep running)")
		}
		sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		d.vms.Shutdown(sctx)
		d.taps.Close()
		if d.dns != nil {
			d.dns.Close()
		}
		d.server.Shutdown(sctx)
	}()
	log.Info("bangerd serving", "socket", l.Socket(), "pid", os.Getpid(), "vmm", d.status.VMM, "disk", d.status.DiskBackend)
	err = d.server.Serve(ln)
	log.Info("bangerd stopped")
	return err
}

func (d *Daemon) init(ctx context.Context) error {
	var err error
	if d.store, err = store.Open(ctx, d.paths.Database()); err != nil {
		return err
	}
	keys, err := guest.LoadKeys(d.paths.SSHKey(), d.paths.KnownHosts())
	if err != nil {
		return err
	}
	driver, why, err := d.chooseDriver(ctx)
	if err != nil {
		return err
	}
	backend, bwhy, err := disk.Choose(d.cfg.Disk.Backend, driver.Name(), d.paths.VMsDir())
	if err != nil {
		return fmt.Errorf("disk.backend: %w", err)
	}
	netCfg := hostnet.Config{Bridge: d.cfg.Network.Bridge, CIDR: d.cfg.CIDR(), TapPrefix: hostnet.DefaultTapPrefix}
	if err := netCfg.Validate(); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	fw, err := netfilter.New(d.firewallConfig())
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	host, hostWhy, err := d.chooseHost(ctx)
	if err != nil {
		return err
	}
	d.log.Info("privileged operations", "backend", hostWhy)
	taps, err := hostnet.NewTapPool(netCfg, d.cfg.Network.TapPool, privileged.TapOps{Ops: host, Bridge: netCfg.Bridge},
		d.log.With("component", "tap-pool"))
	if err != nil {
		return fmt.Errorf("network.tap_pool: %w", err)
	}
	agentBin := d.findAgent()
	d.kernels = &kernel.Store{Dir: d.paths.KernelsDir(), DebCache: filepath.Join(d.paths.CacheDir, "kernel-debs"), DB: d.store, Log: d.log.With("component", "kernel"),
		CatalogURL: d.cfg.Kernel.CatalogURL}
	deps := vm.Deps{Config: d.cfg, Paths: d.paths, Store: d.store, Driver: driver, Disk: backend, Agent: agentBin,
		Init: d.findBinary("banger-init", "images using a store kernel cannot boot"), Kernels: d.kernels,
		Keys: keys, Net: netCfg, Log: d.log, Host: host, Firewall: true, Taps: taps}
	pf := newPreflight(doctor.NewEnv(d.paths))
	deps.Preflight = func(ctx context.Context) error { return pf.run(ctx, VMChecks...) }
	go pf.run(context.Background(), VMChecks...) // warm it: the first create need not wait for the checks
	if d.cfg.Network.DNSListen != "" {
		d.dns, err = dnsserver.New(dnsserver.Options{Logger: d.log.With("component", "dns"), Upstreams: d.cfg.Network.DNSUpstreams,
			ReverseZones:   []netip.Prefix{netCfg.CIDR},
			AllowedClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"), netCfg.CIDR},
			FreeBind:       true, // the bridge address may not exist until the first VM boots
			Listen:         d.listenDNS(host, netCfg.Gateway())})
		if err != nil {
			return fmt.Errorf("dns: %w", err)
		}
		deps.Names = d.dns
	}
	d.vms = vm.New(deps)
	d.driver = driver
	d.status = api.DaemonStatus{Version: api.Version, PID: os.Getpid(), StartedAt: d.started,
		Socket: d.paths.Socket(), StateDir: d.paths.StateDir, VMM: driver.Name(), VMMReason: why,
		DiskBackend: backend.Name(), DiskBackendReason: bwhy, SSHKey: keys.KeyFile, KnownHosts: keys.KnownHosts}
	if err := d.vms.Reconcile(ctx); err != nil {
		return err
	}
	d.fw, d.host, d.netCfg = fw, host, netCfg
	if err := d.startFirewall(ctx, fw, netCfg); err != nil {
		return err
	}
	d.taps = taps
	taps.Start() // after Reconcile (which spares pool taps) and the bridge
	d.startDNS(ctx, netCfg.Gateway())
	return nil
}

// startFirewall creates the bridge and rebuilds banger's nftables tables
// from the running VMs: guest isolation holds from the daemon's start, and
// rules of VMs that are gone are removed. Without it guests would not be
// isolated, so a failure stops the daemon.
func (d *Daemon) startFirewall(ctx context.Context, fw *netfilter.Manager, netCfg hostnet.Config) error {
	if err := d.host.EnsureBridge(ctx, netCfg.Bridge, netCfg.CIDR); err != nil {
		return fmt.Errorf("bridge %s: %w", netCfg.Bridge, err)
	}
	rules, err := d.vms.RunningRules(ctx)
	if err != nil {
		return err
	}
	if err := d.host.FirewallReconcile(ctx, rules); err != nil {
		return fmt.Errorf("firewall (nftables table %q): %w; `banger doctor` checks nftables", fw.Table(), err)
	}
	d.log.Info("firewall ready", "table", fw.Table(), "vms", len(rules))
	return nil
}

// cleanupHost removes what the daemon keeps on the host between VMs — its
// pool taps, nftables tables and the bridge — before it stops (daemon stop --cleanup).
// With a VM running it refuses and changes nothing.
func (d *Daemon) cleanupHost(ctx context.Context) error {
	if running, _ := d.vms.Counts(ctx); running > 0 {
		return rpc.Errorf(rpc.CodeFailedPrecondition, "%d VM(s) running; stop or delete them before `banger daemon stop --cleanup`", running)
	}
	if d.dns != nil { // it listens on the bridge address
		d.dns.Close()
		d.dns = nil
	}
	if err := (resolved.Host{}).Unroute(ctx, d.netCfg.Bridge); err != nil {
		d.log.Warn("could not revert systemd-resolved settings of the bridge", "err", err)
	}
	if err := d.taps.Teardown(); err != nil {
		return fmt.Errorf("remove pool taps: %w", err)
	}
	if err := d.host.FirewallTeardown(ctx); err != nil {
		return fmt.Errorf("remove nftables tables: %w", err)
	}
	if err := d.host.DeleteBridge(ctx, d.netCfg.Bridge); err != nil {
		return fmt.Errorf("delete bridge %s: %w", d.netCfg.Bridge, err)
	}
	d.log.Info("host cleaned up", "bridge", d.netCfg.Bridge, "table", d.fw.Table())
	return nil
}

// startDNS serves NAME.vm for the running VMs on the host's loopback and on
// the bridge address (for guests). A failure (e.g. the port is taken) is
// reported in daemon status and the log; the daemon runs on without DNS.
func (d *Daemon) startDNS(ctx context.Context, gateway netip.Addr) {
	if d.dns == nil {
		d.status.DNS = "off (network.dns_listen = \"\")"
		return
	}
	records, err := d.vms.RunningAddrs(ctx)
	if err == nil {
		err = d.dns.Replace(records)
	}
	if err == nil {
		err = d.dns.Start(context.Background(), []string{d.cfg.Network.DNSListen, netip.AddrPortFrom(gateway, 53).String()})
	}
	if err != nil {
		d.log.Warn("DNS server not started; NAME.vm will not resolve", "err", err)
		d.status.DNS = "not running: " + err.Error()
		d.dns = nil
		return
	}
	var addrs []string
	for _, a := range d.dns.Addrs() {
		addrs = append(addrs, a.String())
	}
	d.status.DNS = strings.Join(addrs, ", ")
	d.routeVMDomain(ctx, gateway)
}

// routeVMDomain tells systemd-resolved, where it is the host's resolver, to
// send NAME.vm queries to the DNS server on the bridge, so every program on
// the host resolves VM names. Elsewhere `banger doctor` gives the recipe.
func (d *Daemon) routeVMDomain(ctx context.Context, gateway netip.Addr) {
	err := resolved.Host{}.Route(ctx, d.netCfg.Bridge, gateway)
	switch {
	case err == nil:
		d.status.DNS += "; systemd-resolved routes .vm here (link " + d.netCfg.Bridge + ")"
		d.log.Info("systemd-resolved routes the vm domain to the bridge DNS", "link", d.netCfg.Bridge)
	case errors.Is(err, resolved.ErrNotActive):
		d.status.DNS += "; host resolver not systemd-resolved: see `banger doctor` (dns-routing) to route .vm"
	default:
		d.log.Warn("could not route the vm domain through systemd-resolved", "err", err)
		d.status.DNS += "; systemd-resolved routing failed: " + err.Error()
	}
}

// chooseDriver resolves config vmm: "auto" picks Firecracker when its binary
// and a usable KVM exist, QEMU otherwise, and says why.
func (d *Daemon) chooseDriver(ctx context.Context) (vmm.Driver, string, error) {
	q := qemu.New(qemu.Options{Binary: d.cfg.QEMU.Binary, Accel: d.cfg.QEMU.Accel, CacheDir: d.paths.CacheDir,
		ProbeKernel: d.probeKernel, Log: d.log})
	fc := firecracker.New(firecracker.Options{Binary: d.cfg.Firecracker.Binary, Log: d.log})
	switch d.cfg.VMM {
	case "qemu":
		return q, "vmm = \"qemu\" in config", qemu.Probe(d.cfg.QEMU.Binary)
	case "firecracker":
		if err := firecracker.Probe(d.cfg.Firecracker.Binary); err != nil {
			return nil, "", fmt.Errorf("vmm = \"firecracker\": %w", err)
		}
		return fc, "vmm = \"firecracker\" in config", nil
	}
	fcErr := firecracker.Probe(d.cfg.Firecracker.Binary)
	if fcErr == nil {
		return fc, "auto: firecracker binary and a usable KVM were found", nil
	}
	if err := qemu.Probe(d.cfg.QEMU.Binary); err != nil {
		return nil, "", fmt.Errorf("no usable VMM: firecracker: %v; qemu: %v", fcErr, err)
	}
	return q, "auto: firecracker unusable (" + fcErr.Error() + "); using qemu", nil
}

// findAgent locates the guest agent binary, installed next to bangerd.
// Without it guests boot as before and readiness falls back to SSH.
func (d *Daemon) findAgent() string {
	return d.findBinary("banger-agent", "guests get no agent and readiness uses SSH")
}

// findBinary locates a guest binary installed next to bangerd, logging
// what its absence means when it is not there.
func (d *Daemon) findBinary(name, without string) string {
	self, err := os.Executable()
	if err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	d.log.Warn(name + " not found next to bangerd; " + without)
	return ""
}

// probeKernel is a registered kernel the QEMU KVM probe can boot.
func (d *Daemon) probeKernel() string {
	ims, err := d.store.ListImages(context.Background())
	if err != nil || len(ims) == 0 {
		return ""
	}
	return ims[0].Kernel
}

// chooseHost picks the backend of the root-only operations: in-process when
// bangerd runs as root, else the root helper (bangerd-root) on the socket
// named by $BANGER_ROOT_HELPER or its installed policy, which must answer.
func (d *Daemon) chooseHost(ctx context.Context) (privileged.Ops, string, error) {
	if os.Geteuid() == 0 {
		l, err := privileged.NewLocal(d.firewallConfig(), -1)
		return l, "in-process (bangerd runs as root)", err
	}
	sock := os.Getenv("BANGER_ROOT_HELPER")
	if sock == "" {
		p, err := privileged.LoadPolicy(privileged.DefaultPolicyFile)
		if err != nil {
			return nil, "", fmt.Errorf("bangerd runs as uid %d without root, so it needs the root helper: %w", os.Geteuid(), err)
		}
		sock = p.SocketPath()
	}
	c := &privileged.Client{Socket: sock}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Ping(pctx); err != nil {
		return nil, "", fmt.Errorf("bangerd runs as uid %d without root and the root helper does not serve it: %w; `banger doctor` checks the helper", os.Geteuid(), err)
	}
	return c, "root helper at " + sock, nil
}

// firewallConfig is the daemon's nftables policy.
func (d *Daemon) firewallConfig() netfilter.Config {
	return netfilter.Config{Bridge: d.cfg.Network.Bridge, CIDR: d.cfg.CIDR(), TapPrefix: hostnet.DefaultTapPrefix,
		AllowGuestToGuest: d.cfg.Network.GuestToGuest}
}

// listenDNS opens the DNS sockets of the bridge address through the
// privileged backend (port 53 needs root); other addresses the DNS server
// binds itself.
func (d *Daemon) listenDNS(host privileged.Ops, gateway netip.Addr) func(context.Context, netip.AddrPort) (net.PacketConn, net.Listener, error) {
	return func(ctx context.Context, ap netip.AddrPort) (net.PacketConn, net.Listener, error) {
		if ap.Addr() != gateway {
			return nil, nil, nil
		}
		return host.ListenDNS(ctx, ap)
	}
}
