package privileged

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// opTimeout bounds one operation.
const opTimeout = 30 * time.Second

// Server is the root helper: it serves Ops (normally a *Local) to the
// policy's owner over a Unix socket, one request per connection, one
// operation at a time.
type Server struct {
	Policy Policy
	Ops    Ops
	Log    *slog.Logger

	mu sync.Mutex // serializes operations
}

// Listen creates the socket: its directory (mode 0755) if missing, a stale
// socket replaced, the socket owned by the policy's owner with mode 0600.
// Only the owner (and root) can connect, and the server checks the peer's
// uid again on every connection.
func (s *Server) Listen() (*net.UnixListener, error) {
	path := s.Policy.SocketPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := errors.Join(os.Chown(path, s.Policy.OwnerUID, -1), os.Chmod(path, 0o600)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("set owner of %s: %w", path, err)
	}
	return ln, nil
}

// Serve accepts connections until ctx ends or ln is closed.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	s.Log.Info("root helper serving", "socket", ln.Addr().String(), "owner_uid", s.Policy.OwnerUID,
		"bridge", s.Policy.Bridge, "cidr", s.Policy.CIDR.String(), "managed_dirs", s.Policy.ManagedDirs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(ctx, c)
		}()
	}
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

func (s *Server) handle(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(opTimeout + 5*time.Second))
	// The request is read in full before anything else, so that a refused
	// peer reads its refusal instead of a reset connection.
	body, rerr := io.ReadAll(io.LimitReader(c, maxMessage+1))
	cred, err := peerCred(c)
	if err != nil {
		s.Log.Warn("refused: cannot read peer credentials", "err", err)
		s.reply(c, Response{Error: refuse("cannot read peer credentials").Error(), Refused: true}, nil)
		return
	}
	log := s.Log.With("peer_uid", cred.Uid, "peer_pid", cred.Pid)
	if int(cred.Uid) != s.Policy.OwnerUID {
		log.Warn("refused: peer is not the owner", "owner_uid", s.Policy.OwnerUID)
		s.reply(c, Response{Error: refuse("uid %d is not the installed owner (uid %d)", cred.Uid, s.Policy.OwnerUID).Error(), Refused: true}, nil)
		return
	}
	var req Request
	if rerr == nil && len(body) > maxMessage {
		rerr = fmt.Errorf("longer than %d bytes", maxMessage)
	}
	if rerr == nil {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		rerr = dec.Decode(&req)
	}
	if rerr != nil {
		log.Warn("refused: malformed request", "err", rerr)
		s.reply(c, Response{Error: refuse("malformed request: %v", rerr).Error(), Refused: true}, nil)
		return
	}
	log = log.With("op", req.Op)
	if err := Check(s.Policy, req); err != nil {
		log.Warn("refused", "request", summary(req), "err", err)
		s.reply(c, Response{Error: err.Error(), Refused: true}, nil)
		return
	}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	s.mu.Lock()
	resp, files, err := s.run(octx, req)
	s.mu.Unlock()
	defer closeFiles(files)
	if err != nil {
		log.Error("operation failed", "request", summary(req), "err", err)
		resp = Response{Error: err.Error()}
		files = nil
	} else {
		log.Info("operation done", "request", summary(req))
	}
	s.reply(c, resp, files)
}

func (s *Server) reply(c *net.UnixConn, r Response, files []*os.File) {
	b, _ := json.Marshal(r)
	if err := writeWithFDs(c, b, files); err != nil {
		s.Log.Warn("reply not delivered", "err", err)
	}
}

// summary renders a request for the log (it holds no secret).
func summary(r Request) string {
	b, _ := json.Marshal(r)
	return string(bytes.TrimSpace(b))
}

// run performs a checked request.
func (s *Server) run(ctx context.Context, r Request) (Response, []*os.File, error) {
	var err error
	switch r.Op {
	case OpPing:
		return Response{Version: ProtocolVersion}, nil, nil
	case OpEnsureBridge:
		err = s.Ops.EnsureBridge(ctx, r.Bridge, netip.MustParsePrefix(r.CIDR))
	case OpDeleteBridge:
		err = s.Ops.DeleteBridge(ctx, r.Bridge)
	case OpCreateTap:
		err = s.Ops.CreateTap(ctx, r.Name, r.Bridge)
	case OpDeleteTap:
		err = s.Ops.DeleteTap(ctx, r.Name)
	case OpRenameTap:
		err = s.Ops.RenameTap(ctx, r.Name, r.NewName)
	case OpOpenTap:
		f, err := s.Ops.OpenTap(ctx, r.Name)
		if err != nil {
			return Response{}, nil, err
		}
		if f == nil {
			return Response{}, nil, fmt.Errorf("open tap %q: this backend does not open taps", r.Name)
		}
		return Response{FDs: []string{"tap"}}, []*os.File{f}, nil
	case OpListTaps:
		taps, err := s.Ops.ListTaps(ctx, r.Prefix)
		return Response{Taps: taps}, nil, err
	case OpFirewallApply:
		err = s.Ops.FirewallApply(ctx, *r.Rules)
	case OpFirewallRemove:
		err = s.Ops.FirewallRemove(ctx, r.VMID)
	case OpFirewallReconcile:
		err = s.Ops.FirewallReconcile(ctx, r.Desired)
	case OpFirewallTeardown:
		err = s.Ops.FirewallTeardown(ctx)
	case OpListenDNS:
		return s.listenDNS(ctx, netip.MustParseAddrPort(r.Addr))
	case OpSignalVMM:
		err = s.Ops.SignalVMM(ctx, *r.Target, syscall.Signal(r.Signal))
	default:
		err = refuse("unknown operation %q", r.Op) // unreachable: Check refused it
	}
	return Response{}, nil, err
}

func (s *Server) listenDNS(ctx context.Context, addr netip.AddrPort) (Response, []*os.File, error) {
	pc, ln, err := s.Ops.ListenDNS(ctx, addr)
	if err != nil {
		return Response{}, nil, err
	}
	defer pc.Close()
	defer ln.Close()
	uf, err := pc.(*net.UDPConn).File()
	if err != nil {
		return Response{}, nil, err
	}
	tf, err := ln.(*net.TCPListener).File()
	if err != nil {
		uf.Close()
		return Response{}, nil, err
	}
	return Response{FDs: []string{"udp", "tcp"}}, []*os.File{uf, tf}, nil
}

// NewHelper builds the root helper's server for a policy: an in-process
// backend whose firewall and taps follow the policy.
func NewHelper(p Policy, log *slog.Logger) (*Server, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	l, err := NewLocal(p.FirewallConfig(), p.OwnerUID)
	if err != nil {
		return nil, err
	}
	l.OpenTaps = true // the owner's VMM may not be able to open /dev/net/tun
	return &Server{Policy: p, Ops: l, Log: log}, nil
}
