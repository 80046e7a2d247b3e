package vm

import (
	"context"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/rpc"
)

// op is one asynchronous operation. Its context is independent of the RPC
// call that began it: the client may disconnect and come back with op.wait,
// and op.cancel cancels it.
type op struct {
	mu      sync.Mutex
	info    api.Op
	running api.Stage // the stage now running, as last reported (replayed to late watchers)
	subs    map[chan api.Stage]struct{}
	done    chan struct{}
	cancel  context.CancelFunc
	expires time.Time
}

type opTable struct {
	mu  sync.Mutex
	ops map[string]*op
	wg  sync.WaitGroup
}

func newOpTable() *opTable { return &opTable{ops: map[string]*op{}} }

// begin starts fn in the background as a new operation on a VM.
func (t *opTable) begin(kind, vmName string, fn func(ctx context.Context, report Reporter) error) api.Op {
	return t.beginOp(api.Op{Kind: kind, VM: vmName}, fn)
}

// beginOp starts fn in the background as a new operation described by info
// (Kind and its subject: VM or Image).
func (t *opTable) beginOp(info api.Op, fn func(ctx context.Context, report Reporter) error) api.Op {
	ctx, cancel := context.WithCancel(context.Background())
	info.ID, info.State, info.Stages, info.StartedAt = newID(), api.OpRunning, []api.Stage{}, time.Now().UTC()
	o := &op{
		info:   info,
		subs:   map[chan api.Stage]struct{}{},
		done:   make(chan struct{}),
		cancel: cancel,
	}
	t.mu.Lock()
	t.gc()
	t.ops[o.info.ID] = o
	t.mu.Unlock()
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer cancel()
		err := fn(ctx, o.report)
		o.mu.Lock()
		o.info.EndedAt = time.Now().UTC()
		o.info.Stage = ""
		switch {
		case err == nil:
			o.info.State = api.OpSucceeded
		case ctx.Err() != nil:
			o.info.State = api.OpCanceled
			o.info.Error = "canceled; everything the operation created was removed"
		default:
			o.info.State = api.OpFailed
			o.info.Error = err.Error()
		}
		o.expires = time.Now().Add(10 * time.Minute)
		for ch := range o.subs {
			close(ch)
		}
		o.subs = nil
		o.mu.Unlock()
		close(o.done)
	}()
	return o.snapshot()
}

// gc drops finished operations past their expiry. Caller holds t.mu.
func (t *opTable) gc() {
	now := time.Now()
	for id, o := range t.ops {
		o.mu.Lock()
		if !o.expires.IsZero() && now.After(o.expires) {
			delete(t.ops, id)
		}
		o.mu.Unlock()
	}
}

func (o *op) report(st api.Stage) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if st.State == "running" {
		o.info.Stage = st.Name
		o.running = st
	} else {
		o.info.Stages = append(o.info.Stages, st)
		if st.Name == o.info.Stage {
			// The running stage ended: nothing runs until the next one
			// starts, so neither status nor a late watcher's replay
			// should show it as running.
			o.info.Stage = ""
			o.running = api.Stage{}
		}
	}
	for ch := range o.subs {
		select {
		case ch <- st:
		default: // a slow watcher misses intermediate events; op.status has the full list
		}
	}
}

func (o *op) snapshot() api.Op {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.info
	c.Stages = append([]api.Stage(nil), o.info.Stages...)
	return c
}

func (t *opTable) get(id string) (*op, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o, ok := t.ops[id]
	if !ok {
		return nil, rpc.Errorf(rpc.CodeNotFound, "no operation %q (finished operations are kept for 10 minutes)", id)
	}
	return o, nil
}

// Status returns an operation's state.
func (s *Service) OpStatus(id string) (api.Op, error) {
	o, err := s.ops.get(id)
	if err != nil {
		return api.Op{}, err
	}
	return o.snapshot(), nil
}

// OpWait streams stage events to send until the operation ends, then
// returns its final state. Canceling ctx stops waiting, not the operation.
func (s *Service) OpWait(ctx context.Context, id string, send func(api.Stage)) (api.Op, error) {
	o, err := s.ops.get(id)
	if err != nil {
		return api.Op{}, err
	}
	ch := make(chan api.Stage, 64)
	o.mu.Lock()
	if o.subs != nil {
		o.subs[ch] = struct{}{}
	} else {
		close(ch)
	}
	// Replay what already happened so a late watcher sees every stage.
	past := append([]api.Stage(nil), o.info.Stages...)
	if o.info.Stage != "" {
		past = append(past, o.running)
	}
	o.mu.Unlock()
	for _, st := range past {
		send(st)
	}
	for {
		select {
		case st, ok := <-ch:
			if !ok {
				<-o.done
				return o.snapshot(), nil
			}
			send(st)
		case <-ctx.Done():
			o.mu.Lock()
			delete(o.subs, ch)
			o.mu.Unlock()
			return api.Op{}, ctx.Err()
		}
	}
}

// OpCancel cancels a running operation; it rolls back what it created.
func (s *Service) OpCancel(id string) (api.Op, error) {
	o, err := s.ops.get(id)
	if err != nil {
		return api.Op{}, err
	}
	o.cancel()
	return o.snapshot(), nil
}

func (t *opTable) cancelAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range t.ops {
		o.cancel()
	}
}

func (t *opTable) waitAll(ctx context.Context) {
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
