package vm

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/rpc"
)

// held reports whether id's lifecycle lock is taken.
func held(s *Service, id string) bool {
	s.mu.Lock()
	l := s.locks[id]
	s.mu.Unlock()
	return l != nil && len(l) == 1
}

func TestLockVMExcludesAndHandsOver(t *testing.T) {
	s := New(Deps{})
	const id = "bangertest-lock"
	unlock, err := s.lockVM(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !held(s, id) {
		t.Fatal("lock not held after lockVM")
	}

	var released atomic.Bool
	type result struct {
		unlock      func()
		err         error
		afterUnlock bool
	}
	got := make(chan result, 1)
	go func() {
		u, err := s.lockVM(context.Background(), id)
		got <- result{u, err, released.Load()}
	}()
	waitBlockedInLockVM(t, 1)
	select {
	case r := <-got:
		t.Fatalf("second locker got the lock while it was held (err %v)", r.err)
	default:
	}

	// A different VM's lock is independent.
	other, err := s.lockVM(context.Background(), "bangertest-other")
	if err != nil {
		t.Fatal(err)
	}
	other()

	released.Store(true)
	unlock()
	r := <-got
	if r.err != nil {
		t.Fatalf("waiter: %v", r.err)
	}
	if !r.afterUnlock {
		t.Fatal("waiter got the lock before it was released")
	}
	if !held(s, id) {
		t.Fatal("lock not held by the waiter")
	}
	r.unlock()
	if held(s, id) {
		t.Fatal("lock still held after the waiter unlocked")
	}
}

func TestLockVMCanceledWaiterGivesUp(t *testing.T) {
	s := New(Deps{})
	const id = "bangertest-lock"
	unlock, err := s.lockVM(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		u, err := s.lockVM(ctx, id)
		if u != nil {
			u()
		}
		done <- err
	}()
	waitBlockedInLockVM(t, 1)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled waiter returned %v, want context.Canceled", err)
	}
	// The holder still holds it; its unlock frees it for the next caller.
	if !held(s, id) {
		t.Fatal("the canceled waiter released the holder's lock")
	}
	unlock()
	u, err := s.lockVM(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	u()
}

// An already-canceled context never takes the lock, even when it is free
// (a select with two ready cases would pick one at random).
func TestLockVMCanceledContextNeverLocks(t *testing.T) {
	s := New(Deps{})
	const id = "bangertest-lock"
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 200 {
		u, err := s.lockVM(ctx, id)
		if !errors.Is(err, context.Canceled) || u != nil {
			t.Fatalf("attempt %d: lockVM with a canceled context returned (unlock=%v, %v), want context.Canceled", i, u != nil, err)
		}
		if held(s, id) {
			t.Fatalf("attempt %d: lockVM with a canceled context took the lock", i)
		}
	}
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	if _, err := s.lockVM(dctx, id); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired deadline: %v, want context.DeadlineExceeded", err)
	}
}

// A VM still being created is refused at once, even while its create holds
// the lock; waiting would block until the guest is up.
func TestGetLockedRefusesCreating(t *testing.T) {
	s := newTestService(t)
	v := insertVM(t, s, "bangertest-creating", api.StateCreating)
	unlock, err := s.lockVM(context.Background(), v.ID) // as the create does
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, u, err := s.getLocked(ctx, v.Name)
	wantCode(t, err, rpc.CodeFailedPrecondition, "vm bangertest-creating is being created")
	if u != nil {
		t.Fatal("getLocked returned an unlock function with its error")
	}
}

func TestGetLockedNotFound(t *testing.T) {
	s := newTestService(t)
	_, u, err := s.getLocked(context.Background(), "bangertest-missing")
	wantCode(t, err, rpc.CodeNotFound, `no VM named "bangertest-missing"`)
	if u != nil {
		t.Fatal("getLocked returned an unlock function with its error")
	}
}

// getLocked waits for the lock and returns the row as it is once the lock is
// taken, not as it was when the call began.
func TestGetLockedWaitsAndRereads(t *testing.T) {
	s := newTestService(t)
	v := insertVM(t, s, "bangertest-busy", api.StateStopped)
	unlock, err := s.lockVM(context.Background(), v.ID)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		v   string
		err error
	}
	got := make(chan result, 1)
	go func() {
		v, u, err := s.getLocked(context.Background(), "bangertest-busy")
		if u != nil {
			if !held(s, v.ID) {
				err = errors.New("getLocked returned without holding the lock")
			}
			u()
		}
		got <- result{v.LastError, err}
	}()
	waitBlockedInLockVM(t, 1)
	// The holder changes the row, then releases.
	v.LastError = "bangertest-changed-under-lock"
	if err := s.save(&v); err != nil {
		t.Fatal(err)
	}
	unlock()
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.v != "bangertest-changed-under-lock" {
		t.Fatalf("getLocked returned a stale row (last error %q)", r.v)
	}
	if held(s, v.ID) {
		t.Fatal("lock still held")
	}
}

func TestGetLockedCanceledWhileWaiting(t *testing.T) {
	s := newTestService(t)
	v := insertVM(t, s, "bangertest-busy", api.StateRunning)
	unlock, err := s.lockVM(context.Background(), v.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() {
		_, u, err := s.getLocked(ctx, v.Name)
		if u != nil {
			u()
		}
		got <- err
	}()
	waitBlockedInLockVM(t, 1)
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("getLocked returned %v, want context.Canceled", err)
	}
	if !held(s, v.ID) {
		t.Fatal("the canceled getLocked released the holder's lock")
	}
}
