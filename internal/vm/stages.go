package vm

import (
	"context"
	"log/slog"
	"time"

	"banger/internal/api"
)

// Reporter receives stage updates as they happen (for progress streams).
type Reporter func(api.Stage)

// stages times the named steps of one operation, reports each transition
// and logs each result with the VM's name.
type stages struct {
	vm     string
	log    *slog.Logger
	report Reporter
	list   []api.Stage
}

func newStages(vm string, log *slog.Logger, report Reporter) *stages {
	if report == nil {
		report = func(api.Stage) {}
	}
	return &stages{vm: vm, log: log, report: report}
}

// run executes fn as stage name. A context error is reported as the stage
// failing because it was canceled.
func (s *stages) run(ctx context.Context, name string, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.report(api.Stage{Name: name, State: "running"})
	start := time.Now()
	err := fn()
	st := api.Stage{Name: name, State: "done", DurationMS: float64(time.Since(start).Microseconds()) / 1000}
	if err != nil {
		st.State = "failed"
		st.Detail = err.Error()
	}
	s.list = append(s.list, st)
	s.report(st)
	s.log.Info("stage", "vm", s.vm, "stage", name, "state", st.State, "ms", st.DurationMS)
	return err
}

func (s *stages) skip(name, why string) {
	st := api.Stage{Name: name, State: "skipped", Detail: why}
	s.list = append(s.list, st)
	s.report(st)
}
