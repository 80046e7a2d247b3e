// Package api holds the daemon's RPC method names and their parameter and
// result types. The CLI, the web UI and scripts all speak these types over
// JSON-RPC 2.0 (package rpc). Types are split by verb: <Noun><Verb>Params
// for requests, plain nouns for results. JSON names are snake_case.
//
// Files: daemon.go (daemon.*), image.go (image.*), vm.go (vm.*), op.go
// (op.*: asynchronous operations such as create).
package api

// Version is the daemon/CLI protocol version; the CLI refuses a daemon whose
// major version differs.
const Version = "0.1.0"

// Stream event names sent with rpc.Stream.Send.
const (
	// EventStage carries a Stage when an operation enters or leaves a stage.
	EventStage = "stage"
	// EventLog carries a LogChunk (vm.logs --follow).
	EventLog = "log"
	// EventProgress carries a Progress (bytes moved, e.g. a workspace copy).
	EventProgress = "progress"
	// EventOutput carries an Output (vm.exec).
	EventOutput = "output"
)
