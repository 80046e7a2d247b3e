package vm

import (
	"context"
	"log/slog"
	"os"
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
	detail string // set by note during a stage; reported when it ends
}

// note attaches detail (e.g. warnings) to the stage now running.
func (s *stages) note(detail string) { s.detail = detail }

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
	if err == nil && os.Getenv(testHoldEnv) == name {
		err = s.holdForTest(ctx, name)
	}
	st := api.Stage{Name: name, State: "done", Detail: s.detail, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
	s.detail = ""
	if err != nil {
		st.State = "failed"
		st.Detail = err.Error()
	}
	s.list = append(s.list, st)
	s.report(st)
	s.log.Info("stage", "vm", s.vm, "stage", name, "state", st.State, "ms", st.DurationMS)
	return err
}

// progress reports bytes done of the running stage name.
func (s *stages) progress(name string, done, total int64, detail string) {
	s.report(api.Stage{Name: name, State: "running", Bytes: done, Total: total, Detail: detail})
}

func (s *stages) skip(name, why string) {
	st := api.Stage{Name: name, State: "skipped", Detail: why}
	s.list = append(s.list, st)
	s.report(st)
}

// testHoldEnv names the stage after which holdForTest blocks.
const testHoldEnv = "BANGER_TEST_HOLD_STAGE"

// holdForTest blocks after stage name has done its work until ctx is
// canceled; it runs only when the daemon was started with
// BANGER_TEST_HOLD_STAGE=name. It reports the stage as running with detail
// HeldDetail first, so the end-to-end tests know the stage's resources exist,
// cancel the create there, and check that the rollback removes them.
func (s *stages) holdForTest(ctx context.Context, name string) error {
	s.report(api.Stage{Name: name, State: "running", Detail: HeldDetail})
	s.log.Warn("holding stage until canceled", "vm", s.vm, "stage", name, "env", testHoldEnv)
	<-ctx.Done()
	return ctx.Err()
}

// HeldDetail is the detail of the stage event holdForTest sends.
const HeldDetail = "held for test"
