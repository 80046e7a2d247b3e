package vm

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
)

// recorder collects reported stage events; it is safe for use from the
// goroutine a stage runs on.
type recorder struct {
	mu     sync.Mutex
	events []api.Stage
}

func (r *recorder) report(st api.Stage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, st)
}

func (r *recorder) get() []api.Stage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]api.Stage(nil), r.events...)
}

func newTestStages(t *testing.T, rep Reporter) (*stages, *bytes.Buffer) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	return newStages("bangertest-vm", log, rep), &buf
}

func TestStageRunDone(t *testing.T) {
	var rec recorder
	st, logs := newTestStages(t, rec.report)
	ran := false
	err := st.run(context.Background(), "bangertest-stage", func() error {
		ran = true
		// The stage's work: sleeping makes the measured duration known
		// to be at least 5ms.
		time.Sleep(5 * time.Millisecond)
		return nil
	})
	if err != nil || !ran {
		t.Fatalf("run = %v, ran = %v", err, ran)
	}
	ev := rec.get()
	if len(ev) != 2 || ev[0] != (api.Stage{Name: "bangertest-stage", State: "running"}) ||
		ev[1].Name != "bangertest-stage" || ev[1].State != "done" || ev[1].Detail != "" {
		t.Fatalf("events %+v, want running then done", ev)
	}
	if ev[1].DurationMS < 5 || ev[1].DurationMS > 60_000 {
		t.Fatalf("duration %vms, want at least 5ms", ev[1].DurationMS)
	}
	if len(st.list) != 1 || st.list[0] != ev[1] {
		t.Fatalf("list %+v, want the done stage", st.list)
	}
	for _, want := range []string{"vm=bangertest-vm", "stage=bangertest-stage", "state=done"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log %q lacks %q", logs, want)
		}
	}
}

func TestStageRunFailed(t *testing.T) {
	var rec recorder
	st, logs := newTestStages(t, rec.report)
	boom := errors.New("bangertest boom")
	err := st.run(context.Background(), "bangertest-stage", func() error { return boom })
	if err != boom {
		t.Fatalf("run returned %v, want the stage's own error", err)
	}
	ev := rec.get()
	if len(ev) != 2 || ev[0].State != "running" || ev[1].State != "failed" || ev[1].Detail != "bangertest boom" {
		t.Fatalf("events %+v, want running then failed with the error as detail", ev)
	}
	if len(st.list) != 1 || st.list[0].State != "failed" || st.list[0].DurationMS < 0 {
		t.Fatalf("list %+v", st.list)
	}
	if !strings.Contains(logs.String(), "state=failed") {
		t.Errorf("log %q lacks the failure", logs)
	}
}

// A context that ended before a stage means the stage does not run at all.
func TestStageRunCanceledBefore(t *testing.T) {
	var rec recorder
	st, _ := newTestStages(t, rec.report)
	if err := st.run(context.Background(), "bangertest-first", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := st.run(ctx, "bangertest-second", func() error {
		t.Error("fn ran under a canceled context")
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run returned %v, want context.Canceled", err)
	}
	if ev := rec.get(); len(ev) != 2 || ev[1].Name != "bangertest-first" {
		t.Fatalf("events %+v: the canceled stage must not be reported", ev)
	}
	if len(st.list) != 1 || st.list[0].Name != "bangertest-first" {
		t.Fatalf("list %+v: the canceled stage must not be recorded", st.list)
	}
}

// A cancel during a stage shows as that stage failing with the context error.
func TestStageRunCanceledDuring(t *testing.T) {
	var rec recorder
	st, _ := newTestStages(t, rec.report)
	ctx, cancel := context.WithCancel(context.Background())
	err := st.run(ctx, "bangertest-stage", func() error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run returned %v", err)
	}
	if len(st.list) != 1 || st.list[0].State != "failed" || st.list[0].Detail != context.Canceled.Error() {
		t.Fatalf("list %+v, want the stage failed with %q", st.list, context.Canceled)
	}
}

func TestStageSkip(t *testing.T) {
	var rec recorder
	st, _ := newTestStages(t, rec.report)
	st.skip("bangertest-stage", "--no-start")
	want := api.Stage{Name: "bangertest-stage", State: "skipped", Detail: "--no-start"}
	if ev := rec.get(); len(ev) != 1 || ev[0] != want {
		t.Fatalf("events %+v, want %+v", ev, want)
	}
	if len(st.list) != 1 || st.list[0] != want {
		t.Fatalf("list %+v, want %+v", st.list, want)
	}
}

// The list keeps every finished stage in order.
func TestStagesListOrder(t *testing.T) {
	st, _ := newTestStages(t, nil) // a nil reporter is allowed
	ctx := context.Background()
	st.run(ctx, "a", func() error { return nil })
	st.skip("b", "why")
	st.run(ctx, "c", func() error { return errors.New("bangertest c failed") })
	var got []string
	for _, s := range st.list {
		got = append(got, s.Name+"="+s.State)
	}
	if strings.Join(got, " ") != "a=done b=skipped c=failed" {
		t.Fatalf("list %v", got)
	}
}

// With BANGER_TEST_HOLD_STAGE naming a stage, that stage does its work,
// reports itself held, and waits for the cancel; the e2e suite relies on it.
func TestStageHoldForTest(t *testing.T) {
	t.Setenv(testHoldEnv, "bangertest-held")
	events := make(chan api.Stage, 8)
	st, _ := newTestStages(t, func(s api.Stage) { events <- s })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Another stage is not held.
	if err := st.run(ctx, "bangertest-other", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"running", "done"} {
		if ev := <-events; ev.State != want || ev.Detail != "" {
			t.Fatalf("unheld stage event %+v, want %s", ev, want)
		}
	}

	ran := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- st.run(ctx, "bangertest-held", func() error { close(ran); return nil })
	}()
	if ev := <-events; ev.State != "running" || ev.Detail != "" {
		t.Fatalf("first event %+v", ev)
	}
	<-ran
	if ev := <-events; ev != (api.Stage{Name: "bangertest-held", State: "running", Detail: HeldDetail}) {
		t.Fatalf("second event %+v, want the held event", ev)
	}
	select {
	case err := <-done:
		t.Fatalf("held stage returned %v before the cancel", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("held stage returned %v, want context.Canceled", err)
	}
	if ev := <-events; ev.State != "failed" || ev.Detail != context.Canceled.Error() {
		t.Fatalf("final event %+v, want failed (canceled)", ev)
	}
}
