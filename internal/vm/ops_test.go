package vm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/rpc"
)

// newOpService returns a Service with no collaborators (the op table needs
// none); its operations are canceled and waited for when the test ends.
func newOpService(t *testing.T) *Service {
	s := New(Deps{})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

// watcher runs OpWait in the background and collects what it sends.
type watcher struct {
	events chan api.Stage
	result chan waitResult
}

type waitResult struct {
	op  api.Op
	err error
}

func watch(ctx context.Context, s *Service, id string) *watcher {
	w := &watcher{events: make(chan api.Stage, 100), result: make(chan waitResult, 1)}
	go func() {
		op, err := s.OpWait(ctx, id, func(st api.Stage) { w.events <- st })
		w.result <- waitResult{op, err}
	}()
	return w
}

// next returns the watcher's next event.
func (w *watcher) next(t *testing.T) api.Stage {
	t.Helper()
	select {
	case st := <-w.events:
		return st
	case r := <-w.result:
		select {
		case st := <-w.events: // sent before the result; select picked at random
			w.result <- r
			return st
		default:
		}
		t.Fatalf("OpWait returned (%+v, %v) while an event was expected", r.op, r.err)
	}
	return api.Stage{}
}

// finish returns OpWait's result and every event sent after those already read.
func (w *watcher) finish(t *testing.T) (api.Op, []api.Stage) {
	t.Helper()
	r := <-w.result
	if r.err != nil {
		t.Fatalf("OpWait: %v", r.err)
	}
	var rest []api.Stage
	for {
		select {
		case st := <-w.events:
			rest = append(rest, st)
		default:
			return r.op, rest
		}
	}
}

func stageList(sts []api.Stage) string {
	var b []string
	for _, st := range sts {
		s := st.Name + ":" + st.State
		if st.Detail != "" {
			s += "(" + st.Detail + ")"
		}
		b = append(b, s)
	}
	return strings.Join(b, " ")
}

func TestOpSucceeds(t *testing.T) {
	s := newOpService(t)
	inStage := make(chan struct{})
	release := make(chan struct{})
	op := s.ops.begin(api.MethodVMCreate, "bangertest-vm", func(ctx context.Context, report Reporter) error {
		report(api.Stage{Name: "a", State: "running"})
		close(inStage)
		<-release
		report(api.Stage{Name: "a", State: "done", DurationMS: 1})
		return nil
	})
	if op.ID == "" || op.Kind != api.MethodVMCreate || op.VM != "bangertest-vm" || op.State != api.OpRunning || op.StartedAt.IsZero() {
		t.Fatalf("begin returned %+v", op)
	}

	<-inStage
	st, err := s.OpStatus(op.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != api.OpRunning || st.Stage != "a" || len(st.Stages) != 0 || !st.EndedAt.IsZero() {
		t.Fatalf("status while running: %+v", st)
	}

	w := watch(context.Background(), s, op.ID)
	if got := w.next(t); got != (api.Stage{Name: "a", State: "running"}) {
		t.Fatalf("replayed %+v, want the running stage", got)
	}
	close(release)
	final, rest := w.finish(t)
	if stageList(rest) != "a:done" {
		t.Fatalf("live events %q, want a:done", stageList(rest))
	}
	if final.State != api.OpSucceeded || final.Error != "" || final.Stage != "" || stageList(final.Stages) != "a:done" ||
		final.EndedAt.IsZero() || final.EndedAt.Before(final.StartedAt) {
		t.Fatalf("final op %+v", final)
	}
	if st, _ := s.OpStatus(op.ID); st.State != api.OpSucceeded || stageList(st.Stages) != "a:done" {
		t.Fatalf("status after the end: %+v", st)
	}
}

func TestOpFails(t *testing.T) {
	s := newOpService(t)
	release := make(chan struct{})
	op := s.ops.begin(api.MethodVMCreate, "bangertest-vm", func(ctx context.Context, report Reporter) error {
		report(api.Stage{Name: "a", State: "running"})
		<-release
		report(api.Stage{Name: "a", State: "failed", Detail: "bangertest disk full"})
		return fmt.Errorf("bangertest create failed: %w", errors.New("disk full"))
	})
	w := watch(context.Background(), s, op.ID)
	w.next(t) // the replayed running stage: the watcher is subscribed
	close(release)
	final, _ := w.finish(t)
	if final.State != api.OpFailed || final.Error != "bangertest create failed: disk full" {
		t.Fatalf("final op %+v, want failed with the fn's error", final)
	}
	if stageList(final.Stages) != "a:failed(bangertest disk full)" {
		t.Fatalf("stages %q", stageList(final.Stages))
	}
}

// Cancel ends the op as canceled, whatever error the rolled-back fn returns.
func TestOpCancel(t *testing.T) {
	for _, tc := range []struct {
		name string
		ret  func(ctx context.Context) error
	}{
		{"returns ctx error", func(ctx context.Context) error { return ctx.Err() }},
		{"returns its own error", func(ctx context.Context) error { return errors.New("bangertest: launch aborted") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newOpService(t)
			started := make(chan struct{})
			rolledBack := make(chan struct{})
			op := s.ops.begin(api.MethodVMCreate, "bangertest-vm", func(ctx context.Context, report Reporter) error {
				report(api.Stage{Name: "launch", State: "running"})
				close(started)
				<-ctx.Done()
				close(rolledBack)
				return tc.ret(ctx)
			})
			<-started
			c, err := s.OpCancel(op.ID)
			if err != nil {
				t.Fatal(err)
			}
			if c.ID != op.ID {
				t.Fatalf("OpCancel returned %+v", c)
			}
			final, _ := watch(context.Background(), s, op.ID).finish(t)
			<-rolledBack
			if final.State != api.OpCanceled || !strings.Contains(final.Error, "canceled") {
				t.Fatalf("final op %+v, want canceled", final)
			}
			// Canceling a finished op changes nothing.
			again, err := s.OpCancel(op.ID)
			if err != nil || again.State != api.OpCanceled {
				t.Fatalf("second cancel: %+v, %v", again, err)
			}
		})
	}
}

// A watcher that arrives late is replayed every finished stage and the stage
// now running, with its detail, then follows live.
func TestOpWaitLateWatcherReplay(t *testing.T) {
	s := newOpService(t)
	reported := make(chan struct{})
	release := make(chan struct{})
	op := s.ops.begin(api.MethodVMCreate, "bangertest-vm", func(ctx context.Context, report Reporter) error {
		report(api.Stage{Name: "a", State: "running"})
		report(api.Stage{Name: "a", State: "done", DurationMS: 3})
		report(api.Stage{Name: "b", State: "skipped", Detail: "--no-start"})
		report(api.Stage{Name: "c", State: "running"})
		report(api.Stage{Name: "c", State: "running", Detail: "bangertest held"})
		close(reported)
		<-release
		report(api.Stage{Name: "c", State: "done", DurationMS: 4})
		report(api.Stage{Name: "d", State: "running"})
		report(api.Stage{Name: "d", State: "done"})
		return nil
	})
	<-reported
	w := watch(context.Background(), s, op.ID)
	var replay []api.Stage
	for range 3 {
		replay = append(replay, w.next(t))
	}
	if got, want := stageList(replay), "a:done b:skipped(--no-start) c:running(bangertest held)"; got != want {
		t.Fatalf("replay %q, want %q", got, want)
	}
	close(release)
	final, rest := w.finish(t)
	if got, want := stageList(rest), "c:done d:running d:done"; got != want {
		t.Fatalf("live events %q, want %q", got, want)
	}
	if got, want := stageList(final.Stages), "a:done b:skipped(--no-start) c:done d:done"; got != want || final.State != api.OpSucceeded {
		t.Fatalf("final op %+v (stages %q), want succeeded with %q", final, got, want)
	}
}

// Between two stages nothing runs: status shows no stage and a late watcher
// is not replayed the finished stage as running again.
func TestOpBetweenStagesNothingRunning(t *testing.T) {
	s := newOpService(t)
	between := make(chan struct{})
	release := make(chan struct{})
	op := s.ops.begin(api.MethodVMCreate, "bangertest-vm", func(ctx context.Context, report Reporter) error {
		report(api.Stage{Name: "a", State: "running"})
		report(api.Stage{Name: "a", State: "failed", Detail: "bangertest"})
		close(between) // e.g. rolling back after a failed stage
		<-release
		report(api.Stage{Name: "b", State: "running"})
		report(api.Stage{Name: "b", State: "done"})
		return nil
	})
	<-between
	st, err := s.OpStatus(op.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Stage != "" {
		t.Errorf("status between stages shows stage %q running", st.Stage)
	}
	w := watch(context.Background(), s, op.ID)
	first := w.next(t)
	close(release)
	_, rest := w.finish(t)
	if got, want := stageList(append([]api.Stage{first}, rest...)), "a:failed(bangertest) b:running b:done"; got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
}

// Every watcher, early or late, gets the final op.
func TestOpWaitAllWatchersSeeFinalOp(t *testing.T) {
	s := newOpService(t)
	running := make(chan struct{})
	release := make(chan struct{})
	op := s.ops.begin(api.MethodVMCreate, "bangertest-vm", func(ctx context.Context, report Reporter) error {
		report(api.Stage{Name: "a", State: "running"})
		close(running)
		<-release
		report(api.Stage{Name: "a", State: "done"})
		return errors.New("bangertest late failure")
	})
	<-running
	var ws []*watcher
	for range 3 {
		w := watch(context.Background(), s, op.ID)
		w.next(t) // subscribed
		ws = append(ws, w)
	}
	close(release)
	for i, w := range ws {
		final, rest := w.finish(t)
		if final.State != api.OpFailed || final.Error != "bangertest late failure" || final.ID != op.ID {
			t.Fatalf("watcher %d: final op %+v", i, final)
		}
		if stageList(rest) != "a:done" {
			t.Fatalf("watcher %d: live events %q", i, stageList(rest))
		}
	}
	// A watcher after the end is replayed the stages and returns at once.
	final, rest := watch(context.Background(), s, op.ID).finish(t)
	if final.State != api.OpFailed || stageList(rest) != "a:done" {
		t.Fatalf("watcher after the end: %+v, events %q", final, stageList(rest))
	}
}

// Canceling a wait stops the watcher, not the operation.
func TestOpWaitCanceledLeavesOpRunning(t *testing.T) {
	s := newOpService(t)
	running := make(chan struct{})
	release := make(chan struct{})
	op := s.ops.begin(api.MethodVMCreate, "bangertest-vm", func(ctx context.Context, report Reporter) error {
		report(api.Stage{Name: "a", State: "running"})
		close(running)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	<-running
	ctx, cancel := context.WithCancel(context.Background())
	w := watch(ctx, s, op.ID)
	w.next(t)
	cancel()
	if r := <-w.result; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("OpWait returned %v, want context.Canceled", r.err)
	}
	o, err := s.ops.get(op.ID)
	if err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	subs := len(o.subs)
	o.mu.Unlock()
	if subs != 0 {
		t.Fatalf("%d subscriptions left after the watcher went away", subs)
	}
	if st, _ := s.OpStatus(op.ID); st.State != api.OpRunning {
		t.Fatalf("op is %s after a wait was canceled", st.State)
	}
	close(release)
	if final, _ := watch(context.Background(), s, op.ID).finish(t); final.State != api.OpSucceeded {
		t.Fatalf("final op %+v", final)
	}
}

func TestOpUnknownID(t *testing.T) {
	s := newOpService(t)
	const want = `no operation "bangertest-nope"`
	_, err := s.OpStatus("bangertest-nope")
	wantCode(t, err, rpc.CodeNotFound, want)
	_, err = s.OpWait(context.Background(), "bangertest-nope", func(api.Stage) { t.Error("event for an unknown op") })
	wantCode(t, err, rpc.CodeNotFound, want)
	_, err = s.OpCancel("bangertest-nope")
	wantCode(t, err, rpc.CodeNotFound, want)
}

// Finished operations are forgotten after their expiry; running ones never.
func TestOpGC(t *testing.T) {
	s := newOpService(t)
	done := s.ops.begin("bangertest", "a", func(context.Context, Reporter) error { return nil })
	if final, _ := watch(context.Background(), s, done.ID).finish(t); final.State != api.OpSucceeded {
		t.Fatalf("op %+v", final)
	}
	release := make(chan struct{})
	running := s.ops.begin("bangertest", "b", func(context.Context, Reporter) error { <-release; return nil })
	defer close(release)

	o, _ := s.ops.get(done.ID)
	o.mu.Lock()
	if o.expires.Before(time.Now().Add(9 * time.Minute)) {
		t.Errorf("finished op expires at %v, want about 10 minutes from now", o.expires)
	}
	o.expires = time.Now().Add(-time.Second)
	o.mu.Unlock()

	s.ops.begin("bangertest", "c", func(context.Context, Reporter) error { return nil }) // runs gc
	if _, err := s.OpStatus(done.ID); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Fatalf("expired op still present (err %v)", err)
	}
	if _, err := s.OpStatus(running.ID); err != nil {
		t.Fatalf("running op was collected: %v", err)
	}
}

// Shutdown cancels running operations and waits for them to roll back.
func TestShutdownCancelsOps(t *testing.T) {
	s := New(Deps{})
	started := make(chan struct{})
	rolledBack := false
	op := s.ops.begin(api.MethodVMCreate, "bangertest-vm", func(ctx context.Context, report Reporter) error {
		close(started)
		<-ctx.Done()
		rolledBack = true
		return ctx.Err()
	})
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.Shutdown(ctx)
	if ctx.Err() != nil {
		t.Fatal("Shutdown did not return before its deadline")
	}
	if !rolledBack {
		t.Fatal("Shutdown returned before the operation finished")
	}
	if st, _ := s.OpStatus(op.ID); st.State != api.OpCanceled {
		t.Fatalf("op %+v after Shutdown, want canceled", st)
	}
}
