package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"banger/internal/agent"
	"banger/internal/api"
	"banger/internal/rpc"
	"banger/internal/store"
)

// agentSocket is the host end of a VM's agent channel.
func agentSocket(v store.VM) string { return filepath.Join(v.Dir, "agent.sock") }

// hasAgent reports whether a running VM was booted with the guest agent.
func hasAgent(v store.VM) bool {
	return v.State == api.StateRunning && bootedWithAgent(v)
}

// bootedWithAgent reports whether the VM's VMM was started with an agent
// channel, whatever its state now (a stopping VM still has it).
func bootedWithAgent(v store.VM) bool {
	_, err := os.Stat(agentSocket(v))
	return err == nil
}

// agentClient returns the VM's agent connection, dialing it on first use.
// QEMU's socket takes one client at a time, so every caller shares one
// connection (requests are multiplexed on it).
func (s *Service) agentClient(ctx context.Context, v store.VM) (*agent.Client, error) {
	s.agentMu.Lock()
	defer s.agentMu.Unlock()
	if c := s.agents[v.ID]; c != nil {
		select {
		case <-c.Done():
		default:
			return c, nil
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := agent.DialWait(dctx, agentDialer(v, agentSocket(v)))
	if err != nil {
		return nil, rpc.Errorf(rpc.CodeUnavailable, "vm %s: guest agent does not answer: %v", v.Name, err)
	}
	s.agents[v.ID] = c
	return c, nil
}

// dropAgent closes a VM's agent connection (the VM stopped or went away).
func (s *Service) dropAgent(id string) {
	s.agentMu.Lock()
	c := s.agents[id]
	delete(s.agents, id)
	s.agentMu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Exec runs a command in a running VM through its guest agent, streaming
// its output through out. Canceling ctx (the client went away) kills it.
func (s *Service) Exec(ctx context.Context, p api.VMExecParams, out func(api.Output)) (api.VMExecResult, error) {
	if len(p.Argv) == 0 {
		return api.VMExecResult{}, invalid("exec needs a command")
	}
	v, err := s.get(ctx, p.Name)
	if err != nil {
		return api.VMExecResult{}, err
	}
	if v.State != api.StateRunning {
		return api.VMExecResult{}, rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s is %s; start it with `banger vm start %s`", v.Name, v.State, v.Name)
	}
	if !hasAgent(v) {
		return api.VMExecResult{}, rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s has no guest agent (its image has no initramfs banger can extend); use `banger vm ssh`", v.Name)
	}
	dir := p.Dir
	if dir == "" && v.Workspace != nil {
		dir = v.Workspace.Dest
		if v.Workspace.Subdir != "" {
			dir += "/" + v.Workspace.Subdir
		}
	}
	c, err := s.agentClient(ctx, v)
	if err != nil {
		return api.VMExecResult{}, err
	}
	st, err := c.Exec(ctx, agent.ExecRequest{Argv: p.Argv, Env: p.Env, Dir: dir}, nil,
		outputWriter{"stdout", out}, outputWriter{"stderr", out}, nil)
	if errors.Is(err, agent.ErrClosed) {
		s.dropAgent(v.ID)
	}
	if err != nil {
		return api.VMExecResult{}, fmt.Errorf("exec in vm %s: %w", v.Name, err)
	}
	return api.VMExecResult{ExitCode: st.ShellCode(), Signal: st.Signal}, nil
}

// outputWriter turns a command's output into Output events.
type outputWriter struct {
	stream string
	send   func(api.Output)
}

func (w outputWriter) Write(b []byte) (int, error) {
	w.send(api.Output{Stream: w.stream, Data: append([]byte(nil), b...)})
	return len(b), nil
}

var _ io.Writer = outputWriter{}
