// Package rpc is the transport between the banger CLI and bangerd: JSON-RPC
// 2.0 over a Unix stream socket, extended with per-call cancellation and
// per-call event streams.
//
// # Framing
//
// Each message is one JSON value on one line (newline-delimited JSON), in
// both directions. A line may hold at most [MaxMessageSize] bytes; the client
// refuses to send a larger request, the server answers a larger line with a
// -32600 error (id null) and closes the connection, and replaces an oversized
// result with an internal error. Batch requests are rejected with -32600.
//
// # Protocol
//
// Requests, responses and error objects are plain JSON-RPC 2.0. A connection
// may carry many requests at once: the server runs each in its own goroutine
// and serialises writes; the client routes responses by id. Error codes
// below -32000 are the JSON-RPC ones; the small positive codes (CodeNotFound,
// ...) are banger's application codes. An [*Error] travels intact: a client
// gets it back as an *Error with the same code, message and data.
//
// Two notifications extend the protocol:
//
//	client → server  {"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":<call id>}}
//	server → client  {"jsonrpc":"2.0","method":"rpc.event","params":{"id":<call id>,"event":"<name>","data":<any>}}
//
// rpc.event is sent by a handler through its [Stream]; all events of a call
// are written before the call's response. Other client notifications are
// ignored.
//
// # Cancellation
//
// A handler's context is cancelled when the client sends rpc.cancel for the
// call (the [Client] does so when the caller's context ends, and returns
// without waiting for the server), when the client connection reaches EOF
// (the client went away), or when the server is shut down.
// [context.Cause] tells which.
package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// MaxMessageSize is the largest message (one line, without its newline) that
// either side sends or accepts.
const MaxMessageSize = 16 << 20

// Error codes. The negative ones are defined by JSON-RPC 2.0; the positive
// ones are banger's.
const (
	CodeParse          = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternal       = -32603

	CodeNotFound           = 1
	CodeConflict           = 2
	CodeInvalidArgument    = 3
	CodeFailedPrecondition = 4
	CodeCanceled           = 5
	CodeUnavailable        = 6
)

// Error is a JSON-RPC error object. Handlers return it to choose the code a
// client sees; clients receive server errors as *Error.
type Error struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`

	wrapped error // set by Errorf when the format has %w; never sent
}

// Error returns the message, which is shown to users verbatim.
func (e *Error) Error() string { return e.Message }

// Unwrap returns the error wrapped with %w in Errorf, if any.
func (e *Error) Unwrap() error { return e.wrapped }

// Errorf returns an *Error with the given code and a fmt-formatted message.
// A %w verb wraps its argument (for errors.Is/As on the server side).
func Errorf(code int, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), wrapped: errors.Unwrap(err)}
}

// CodeOf returns the code of the first *Error in err's chain, CodeCanceled
// for context.Canceled, 0 for nil, and CodeInternal otherwise.
func CodeOf(err error) int {
	var e *Error
	switch {
	case err == nil:
		return 0
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	default:
		return CodeInternal
	}
}

// toError converts a handler error into the error object sent on the wire:
// the code of CodeOf(err) (plus the data of a wrapped *Error) and the message
// of the outermost error.
func toError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		if e == err {
			return e
		}
		return &Error{Code: e.Code, Message: err.Error(), Data: e.Data}
	}
	return &Error{Code: CodeOf(err), Message: err.Error()}
}

// DecodeParams decodes a call's params into v strictly: unknown fields and
// trailing data are errors. Absent or null params leave v untouched (the zero
// value, for a fresh v). Errors are *Error with CodeInvalidParams.
func DecodeParams(raw json.RawMessage, v any) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("unexpected data after params")
	}
	if err != nil {
		return Errorf(CodeInvalidParams, "invalid params: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// message is any JSON-RPC 2.0 message: request, notification or response.
type message struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *Error          `json:"error,omitempty"`
}

const (
	methodCancel = "rpc.cancel"
	methodEvent  = "rpc.event"
)

type cancelParams struct {
	ID json.RawMessage `json:"id"`
}

type eventParams struct {
	ID    json.RawMessage `json:"id"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// errTooLarge reports a line longer than MaxMessageSize.
var errTooLarge = fmt.Errorf("message exceeds the %d MiB limit", MaxMessageSize>>20)

// encode marshals a message into one line, newline included. json.Marshal
// never emits a raw newline, so the framing cannot break.
func encode(m *message) ([]byte, error) {
	m.JSONRPC = "2.0"
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w (%d bytes)", errTooLarge, len(b))
	}
	return append(b, '\n'), nil
}

// readLine returns the next line without its newline. A line longer than
// MaxMessageSize yields errTooLarge; the reader is then mid-line.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > MaxMessageSize+1 ||
			(err != nil && len(line)+len(chunk) > MaxMessageSize) {
			return nil, errTooLarge
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, io.EOF) && len(line) > 0:
			return line, nil // last line without newline
		case !errors.Is(err, bufio.ErrBufferFull):
			return nil, err
		}
	}
}
