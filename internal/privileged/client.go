package privileged

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"banger/internal/netfilter"
)

// Client is the daemon's backend when it does not run as root: each
// operation is one request to the root helper.
type Client struct {
	// Socket is the helper's socket path.
	Socket string
}

var _ Ops = (*Client)(nil)

// ErrHelperUnreachable is wrapped when the helper's socket cannot be reached.
var ErrHelperUnreachable = errors.New("root helper unreachable")

// Do sends one request and returns the response and any file descriptors
// that came with it. A refusal is an error wrapping ErrRefused; a failed
// operation is an error with the helper's message.
func (c *Client) Do(ctx context.Context, req Request) (Response, []*os.File, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return Response{}, nil, fmt.Errorf("%w at %s: %v (is bangerd-root running? `banger system status` shows it)", ErrHelperUnreachable, c.Socket, err)
	}
	uc := conn.(*net.UnixConn)
	defer uc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = uc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.Close() })
	defer stop()
	b, err := json.Marshal(req)
	if err != nil {
		return Response{}, nil, err
	}
	_, werr := uc.Write(b)
	_ = uc.CloseWrite()
	// Read even after a failed write: the helper may have answered (a
	// refusal) and closed first.
	data, files, err := readWithFDs(uc)
	if err != nil || (werr != nil && len(data) == 0) {
		return Response{}, nil, fmt.Errorf("root helper %s: %w", req.Op, errors.Join(werr, err))
	}
	var resp Response
	if err := json.Unmarshal(data, &resp); err != nil {
		closeFiles(files)
		return Response{}, nil, fmt.Errorf("root helper %s: bad response: %w", req.Op, err)
	}
	if resp.Error != "" {
		closeFiles(files)
		if resp.Refused {
			return resp, nil, fmt.Errorf("%w (%s)", ErrRefused, resp.Error)
		}
		return resp, nil, fmt.Errorf("root helper %s: %s", req.Op, resp.Error)
	}
	if len(files) != len(resp.FDs) {
		closeFiles(files)
		return resp, nil, fmt.Errorf("root helper %s: %d descriptors announced, %d received", req.Op, len(resp.FDs), len(files))
	}
	return resp, files, nil
}

func (c *Client) do(ctx context.Context, req Request) error {
	_, _, err := c.Do(ctx, req)
	return err
}

// Ping checks that the helper answers and speaks this protocol version.
func (c *Client) Ping(ctx context.Context) error {
	resp, _, err := c.Do(ctx, Request{Op: OpPing})
	if err != nil {
		return err
	}
	if resp.Version != ProtocolVersion {
		return fmt.Errorf("root helper speaks protocol %d, this banger %d: reinstall with `banger system install`", resp.Version, ProtocolVersion)
	}
	return nil
}

func (c *Client) EnsureBridge(ctx context.Context, bridge string, cidr netip.Prefix) error {
	return c.do(ctx, Request{Op: OpEnsureBridge, Bridge: bridge, CIDR: cidr.String()})
}

func (c *Client) DeleteBridge(ctx context.Context, bridge string) error {
	return c.do(ctx, Request{Op: OpDeleteBridge, Bridge: bridge})
}

func (c *Client) CreateTap(ctx context.Context, name, bridge string) error {
	return c.do(ctx, Request{Op: OpCreateTap, Name: name, Bridge: bridge})
}

func (c *Client) DeleteTap(ctx context.Context, name string) error {
	return c.do(ctx, Request{Op: OpDeleteTap, Name: name})
}

func (c *Client) RenameTap(ctx context.Context, from, to string) error {
	return c.do(ctx, Request{Op: OpRenameTap, Name: from, NewName: to})
}

// OpenTap receives a descriptor attached to the tap from the helper.
func (c *Client) OpenTap(ctx context.Context, name string) (*os.File, error) {
	_, files, err := c.Do(ctx, Request{Op: OpOpenTap, Name: name})
	if err != nil {
		return nil, err
	}
	if len(files) != 1 {
		closeFiles(files)
		return nil, fmt.Errorf("root helper open_tap: want 1 descriptor, got %d", len(files))
	}
	return files[0], nil
}

func (c *Client) ListTaps(ctx context.Context, prefix string) ([]string, error) {
	resp, _, err := c.Do(ctx, Request{Op: OpListTaps, Prefix: prefix})
	return resp.Taps, err
}

func (c *Client) FirewallApply(ctx context.Context, rules netfilter.VMRules) error {
	return c.do(ctx, Request{Op: OpFirewallApply, Rules: &rules})
}

func (c *Client) FirewallRemove(ctx context.Context, vmID string) error {
	return c.do(ctx, Request{Op: OpFirewallRemove, VMID: vmID})
}

func (c *Client) FirewallReconcile(ctx context.Context, desired []netfilter.VMRules) error {
	return c.do(ctx, Request{Op: OpFirewallReconcile, Desired: desired})
}

func (c *Client) FirewallTeardown(ctx context.Context) error {
	return c.do(ctx, Request{Op: OpFirewallTeardown})
}

// ListenDNS receives the UDP socket and TCP listener the helper opened.
func (c *Client) ListenDNS(ctx context.Context, addr netip.AddrPort) (net.PacketConn, net.Listener, error) {
	_, files, err := c.Do(ctx, Request{Op: OpListenDNS, Addr: addr.String()})
	if err != nil {
		return nil, nil, err
	}
	defer closeFiles(files) // net.File* duplicate the descriptors
	if len(files) != 2 {
		return nil, nil, fmt.Errorf("root helper listen_dns: want 2 descriptors, got %d", len(files))
	}
	pc, err := net.FilePacketConn(files[0])
	if err != nil {
		return nil, nil, fmt.Errorf("root helper listen_dns: udp socket: %w", err)
	}
	ln, err := net.FileListener(files[1])
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("root helper listen_dns: tcp listener: %w", err)
	}
	return pc, ln, nil
}

func (c *Client) SignalVMM(ctx context.Context, t VMMTarget, sig syscall.Signal) error {
	return c.do(ctx, Request{Op: OpSignalVMM, Target: &t, Signal: int(sig)})
}
