package api

import "time"

const (
	// MethodOpStatus returns an Op. MethodOpWait streams EventStage events
	// until the operation ends and returns the final Op. MethodOpCancel
	// cancels it; the operation rolls back what it created.
	MethodOpStatus = "op.status"
	MethodOpWait   = "op.wait"
	MethodOpCancel = "op.cancel"
)

// Op states.
const (
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
	OpCanceled  = "canceled"
)

// Op is an asynchronous operation (vm create, image pull).
type Op struct {
	ID   string `json:"id"`
	Kind string `json:"kind"` // "vm.create" or "image.pull"
	VM   string `json:"vm"`
	// Image is the image an image.pull makes.
	Image string `json:"image,omitempty"`
	State string `json:"state"`
	// Stage is the stage in progress (while running).
	Stage  string  `json:"stage,omitempty"`
	Stages []Stage `json:"stages"`
	// Error is the failure message (failed or canceled).
	Error     string    `json:"error,omitempty"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at,omitempty"`
}

// Stage is one named step of a long operation with its timing.
type Stage struct {
	Name string `json:"name"`
	// State: "running", "done", "failed", "skipped".
	State      string  `json:"state"`
	DurationMS float64 `json:"duration_ms"`
	Detail     string  `json:"detail,omitempty"`
	// Bytes and Total count the running stage's progress (downloads),
	// when it has any; a stage may report "running" many times.
	Bytes int64 `json:"bytes,omitempty"`
	Total int64 `json:"total,omitempty"`
}

// OpRef names one operation.
type OpRef struct {
	ID string `json:"id"`
}
