package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"banger/internal/agent"
	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/disk"
	"banger/internal/guest"
	"banger/internal/hostnet"
	"banger/internal/kernel"
	"banger/internal/netfilter"
	"banger/internal/paths"
	"banger/internal/privileged"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/vmm"
)

// Deps are the collaborators a Service composes.
type Deps struct {
	Config config.Config
	Paths  paths.Layout
	Store  *store.Store
	Driver vmm.Driver
	// Disk is the root disk backend for new VMs.
	Disk disk.Backend
	Keys *guest.Keys
	// Host does the root-only host work of a VM's life: the bridge, its
	// tap and, when Firewall is set, its nftables rules. The daemon gives
	// privileged.Local when it runs as root and the root helper's client
	// otherwise; nil means a privileged.Local without firewall.
	Host privileged.Ops
	// Firewall applies each running VM's NAT and published ports and the
	// guests' isolation through Host (false: no firewall, e.g. in unit tests).
	Firewall bool
	// Preflight checks the host can run a VM before a create or start
	// makes anything (nil: no checks); its error goes to the caller as is.
	Preflight func(ctx context.Context) error
	// Taps hands out ready taps at VM start (nil: each start creates its tap).
	Taps *hostnet.TapPool
	// Names receives NAME.vm records as VMs start and stop (nil: no DNS).
	Names Names
	// Agent is the guest agent binary given to guests through their
	// initramfs ("" for none: readiness then uses SSH).
	Agent string
	// Init is banger-init, the /init of the initramfs banger generates for
	// images that boot a kernel-store kernel ("" for none: such images
	// cannot boot).
	Init string
	// Kernels is the kernel store (nil: images cannot use store kernels).
	Kernels *kernel.Store
	Net     hostnet.Config
	Log     *slog.Logger
}

// Names is where running VMs' addresses are published (the daemon's DNS).
type Names interface {
	Set(name string, ip netip.Addr) error
	Remove(name string)
}

// Service owns every VM's lifecycle.
type Service struct {
	Deps
	ops *opTable

	reserve sync.Mutex // name uniqueness + address allocation (see doc.go for lock order)

	mu    sync.Mutex               // guards locks and live; never held across I/O
	locks map[string]chan struct{} // per-VM lifecycle locks (1-slot semaphores, so waits can be canceled)
	live  map[string]vmm.Machine   // by VM id: the running machine

	agentMu sync.Mutex               // guards agents; a leaf lock, held while dialing one VM's agent
	agents  map[string]*agent.Client // by VM id: the shared agent connection

	images imageState // image pulls in flight and the blob cache lock (imagepull.go)
}

// New returns a Service. Call Reconcile before serving requests.
func New(d Deps) *Service {
	if d.Host == nil {
		d.Host = &privileged.Local{TapOwner: -1}
	}
	return &Service{Deps: d, ops: newOpTable(), locks: map[string]chan struct{}{}, live: map[string]vmm.Machine{}, agents: map[string]*agent.Client{}}
}

// lockVM takes the VM's lifecycle lock and returns its unlock function. It
// gives up when ctx ends (a client that stops waiting frees its place).
func (s *Service) lockVM(ctx context.Context, id string) (func(), error) {
	s.mu.Lock()
	l, ok := s.locks[id]
	if !ok {
		l = make(chan struct{}, 1)
		s.locks[id] = l
	}
	s.mu.Unlock()
	// A select with both cases ready picks one at random: check ctx first so
	// an already-ended context never takes the lock.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	select {
	case l <- struct{}{}:
		return func() { <-l }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// mustLockVM takes the VM's lock for the daemon's own background work, which
// is never canceled.
func (s *Service) mustLockVM(id string) func() {
	unlock, _ := s.lockVM(context.Background(), id)
	return unlock
}

func (s *Service) machine(id string) vmm.Machine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live[id]
}

func (s *Service) setMachine(id string, m vmm.Machine) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m == nil {
		delete(s.live, id)
	} else {
		s.live[id] = m
	}
}

// get loads a VM by name, mapping absence to a NotFound RPC error.
func (s *Service) get(ctx context.Context, name string) (store.VM, error) {
	v, err := s.Store.GetVM(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return v, rpc.Errorf(rpc.CodeNotFound, "no VM named %q (see `banger vm list`)", name)
	}
	return v, err
}

// getLocked loads a VM by name and takes its lock; the row is re-read under
// the lock so it is current. A VM still being created is refused at once
// rather than waited for: its create holds the lock until the guest is up.
func (s *Service) getLocked(ctx context.Context, name string) (store.VM, func(), error) {
	v, err := s.get(ctx, name)
	if err != nil {
		return v, nil, err
	}
	if v.State == api.StateCreating {
		return v, nil, rpc.Errorf(rpc.CodeFailedPrecondition,
			"vm %s is being created; wait for the create to finish or cancel it (Ctrl-C on `banger vm create`)", name)
	}
	unlock, err := s.lockVM(ctx, v.ID)
	if err != nil {
		return v, nil, err
	}
	v, err = s.get(ctx, name)
	if err != nil {
		unlock()
		return v, nil, err
	}
	return v, unlock, nil
}

// save writes the row, logging (not failing) when the context is gone: state
// written during rollback must land even after a cancel.
func (s *Service) save(v *store.VM) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.Store.UpdateVM(ctx, *v)
}

// View converts a row to its API form.
func (s *Service) View(v store.VM) api.VM {
	out := api.VM{
		ID: v.ID, Name: v.Name, State: v.State, Image: v.Image, VCPU: v.VCPU, MemoryMiB: v.MemoryMiB,
		DiskSizeBytes: v.DiskSize, WorkSizeBytes: v.WorkSize, IP: v.IP, MAC: v.MAC, Tap: v.Tap,
		Driver: v.Driver, RootBackend: v.Root.Backend, RootPath: v.Root.Path, WorkPath: v.WorkPath,
		ConsoleLog: consoleLog(v), BootID: v.BootID, CreatedAt: v.CreatedAt, StartedAt: v.StartedAt,
		Stages: v.Stages, LastError: v.LastError, Workspace: v.Workspace, Agent: hasAgent(v), NAT: v.NAT, Publish: v.Publish,
	}
	if v.Handle != nil {
		out.PID = v.Handle.PID
		out.Accel = v.Handle.Accel
	}
	return out
}

// List returns every VM.
func (s *Service) List(ctx context.Context) ([]api.VM, error) {
	vms, err := s.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(vms))
	for _, v := range vms {
		out = append(out, s.View(v))
	}
	return out, nil
}

// Show returns one VM.
func (s *Service) Show(ctx context.Context, name string) (api.VM, error) {
	v, err := s.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	return s.View(v), nil
}

// SSHInfo returns what the CLI needs to run the system ssh against a VM.
func (s *Service) SSHInfo(ctx context.Context, name string) (api.SSHInfo, error) {
	v, err := s.running(ctx, name)
	if err != nil {
		return api.SSHInfo{}, err
	}
	if err := s.ensureSSH(ctx, v); err != nil {
		return api.SSHInfo{}, err
	}
	return api.SSHInfo{Name: v.Name, Host: v.IP, User: "root", KeyFile: s.Keys.KeyFile,
		KnownHosts: s.Keys.KnownHosts, HostKeyAlias: guest.Alias(v.Name)}, nil
}

// running loads a VM and refuses one that is not running.
func (s *Service) running(ctx context.Context, name string) (store.VM, error) {
	v, err := s.get(ctx, name)
	if err == nil && v.State != api.StateRunning {
		err = rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s is %s; start it with `banger vm start %s`", v.Name, v.State, v.Name)
	}
	return v, err
}

// ensureSSH makes a VM reachable for the system ssh: with agent readiness
// a create can finish before sshd listens, and the guest's host key must be
// pinned (first use) before ssh runs with StrictHostKeyChecking. Once pinned,
// it only waits for the port.
func (s *Service) ensureSSH(ctx context.Context, v store.VM) error {
	if !s.Keys.Pinned(v.Name) {
		c, err := s.waitSSH(ctx, v)
		if err != nil {
			return err
		}
		return c.Close()
	}
	timeout, _ := s.Config.ReadyTimeout()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr := net.JoinHostPort(v.IP, "22")
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c.Close()
		}
		select {
		case <-ctx.Done():
			return rpc.Errorf(rpc.CodeUnavailable, "vm %s: sshd does not listen at %s: %v", v.Name, addr, err)
		case <-time.After(100 * time.Millisecond): // retry interval while sshd starts
		}
	}
}

// waitSSH connects to a running VM's sshd, waiting (up to the ready timeout)
// while it starts, and pins the host key on first use.
func (s *Service) waitSSH(ctx context.Context, v store.VM) (*guest.Client, error) {
	timeout, _ := s.Config.ReadyTimeout()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := s.Keys.WaitReady(ctx, v.Name, net.JoinHostPort(v.IP, "22"))
	return c, sshError(v, err)
}

// sshError gives an SSH failure its RPC code: a changed host key is the
// user's to resolve, anything else means the guest does not answer.
func sshError(v store.VM, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, guest.ErrHostKeyChanged):
		return rpc.Errorf(rpc.CodeFailedPrecondition, "%v", err)
	default:
		return rpc.Errorf(rpc.CodeUnavailable, "vm %s does not answer SSH at %s: %v", v.Name, v.IP, err)
	}
}

// SSHCheck does one SSH handshake with a running VM, returning the precise
// failure (unreachable, changed host key) for the CLI to show after the
// system ssh failed.
func (s *Service) SSHCheck(ctx context.Context, name string) error {
	v, err := s.running(ctx, name)
	if err != nil {
		return err
	}
	c, err := s.Keys.Dial(ctx, v.Name, net.JoinHostPort(v.IP, "22"), 10*time.Second)
	if err != nil {
		return sshError(v, err)
	}
	return c.Close()
}

// firewallRules are a VM's rules for the firewall.
func firewallRules(v store.VM) (netfilter.VMRules, error) {
	r := netfilter.VMRules{ID: v.ID, Name: v.Name, Tap: v.Tap, NAT: v.NAT}
	var err error
	if r.IP, err = netip.ParseAddr(v.IP); err != nil {
		return r, fmt.Errorf("vm %s: address %q: %w", v.Name, v.IP, err)
	}
	for _, spec := range v.Publish {
		pm, err := netfilter.ParsePublish(spec)
		if err != nil {
			return r, fmt.Errorf("vm %s: published port %q: %w", v.Name, spec, err)
		}
		r.Publish = append(r.Publish, pm)
	}
	return r, nil
}

// RunningRules are the firewall rules of every running VM (to rebuild the
// firewall on daemon start).
func (s *Service) RunningRules(ctx context.Context) ([]netfilter.VMRules, error) {
	vms, err := s.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	var out []netfilter.VMRules
	for _, v := range vms {
		if v.State != api.StateRunning {
			continue
		}
		r, err := firewallRules(v)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// RunningAddrs maps each running VM's name to its address (to rebuild DNS).
func (s *Service) RunningAddrs(ctx context.Context) (map[string]netip.Addr, error) {
	vms, err := s.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	m := map[string]netip.Addr{}
	for _, v := range vms {
		if ip, err := netip.ParseAddr(v.IP); err == nil && v.State == api.StateRunning {
			m[v.Name] = ip
		}
	}
	return m, nil
}

// Counts returns running and total VMs.
func (s *Service) Counts(ctx context.Context) (running, total int) {
	vms, _ := s.Store.ListVMs(ctx)
	for _, v := range vms {
		if v.State == api.StateRunning {
			running++
		}
	}
	return running, len(vms)
}

func consoleLog(v store.VM) string { return v.Dir + "/console.log" }

// Shutdown cancels running operations (they roll back) and releases the
// daemon's hold on machines without stopping them.
func (s *Service) Shutdown(ctx context.Context) {
	s.ops.cancelAll()
	s.ops.waitAll(ctx)
	s.agentMu.Lock()
	ids := make([]string, 0, len(s.agents))
	for id := range s.agents {
		ids = append(ids, id)
	}
	s.agentMu.Unlock()
	for _, id := range ids {
		s.dropAgent(id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, m := range s.live {
		m.Close()
		delete(s.live, id)
	}
}

func fileExists(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	return nil
}
