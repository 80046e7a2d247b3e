package firecracker

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"banger/internal/vmm"
	"banger/internal/vmm/proc"
)

// Adopt implements vmm.Driver: it re-attaches to a Firecracker started by an
// earlier daemon, after checking that h.PID is still that process (start
// time, and the API socket or jail id in its argv). It returns
// vmm.ErrNotRunning when the process is gone or is someone else's.
func (d *Driver) Adopt(ctx context.Context, h vmm.Handle) (vmm.Machine, error) {
	if h.Driver != "" && h.Driver != driverName {
		return nil, fmt.Errorf("firecracker: cannot adopt a %q machine", h.Driver)
	}
	if h.ControlSocket == "" {
		return nil, errors.New("firecracker: handle has no API socket")
	}
	p, err := proc.Adopt(h.PID, h.StartTime, d.markerFor(h.ControlSocket))
	if err != nil {
		if errors.Is(err, proc.ErrGone) {
			return nil, fmt.Errorf("firecracker pid %d: %w", h.PID, vmm.ErrNotRunning)
		}
		return nil, err
	}
	c := NewClient(h.ControlSocket)
	if _, err := c.DescribeInstance(ctx); err != nil {
		// The process is ours and alive, so signals still work; only
		// CtrlAltDel needs the socket.
		d.log.Warn("adopted firecracker does not answer on its API socket", "pid", h.PID, "socket", h.ControlSocket, "err", err)
	}
	h.Driver = driverName
	return &machine{h: h, p: p, c: c}, nil
}

// machine is a running Firecracker process.
type machine struct {
	h vmm.Handle
	p *proc.Process
	c *Client
}

var _ vmm.Machine = (*machine)(nil)

func (m *machine) Handle() vmm.Handle { return m.h }

func (m *machine) Done() <-chan struct{} { return m.p.Done() }

// Quit stops the VMM with SIGTERM, sent after proc verifies the process is
// still ours. Firecracker has no quit API action, and installs no SIGTERM
// handler, so this terminates it at once: the guest gets no notice. Ask the
// guest first (CtrlAltDel, or the guest agent) and wait on Done.
func (m *machine) Quit(ctx context.Context) error {
	return m.Signal(syscall.SIGTERM)
}

// Signal sends sig to the Firecracker process after verifying its identity.
func (m *machine) Signal(sig syscall.Signal) error {
	if err := m.p.Signal(sig); err != nil {
		if errors.Is(err, proc.ErrGone) {
			return fmt.Errorf("firecracker pid %d: %w", m.h.PID, vmm.ErrNotRunning)
		}
		return err
	}
	return nil
}

// CtrlAltDel sends SendCtrlAltDel: Firecracker injects Ctrl+Alt+Del through
// its i8042 emulation (x86_64 only). A Linux guest reboots on it, and
// Firecracker exits when the guest reboots (the guest needs reboot=k and
// an i8042 driver), so this is banger's graceful stop.
func (m *machine) CtrlAltDel(ctx context.Context) error {
	return m.c.Action(ctx, ActionSendCtrlAltDel)
}

// Close drops the API connection; Firecracker keeps running.
func (m *machine) Close() error {
	m.c.Close()
	return nil
}
