package agent

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Protocol version. Hosts and agents with the same major version interoperate;
// a minor version only adds operations.
const (
	ProtocolMajor = 1
	ProtocolMinor = 0
)

// ProtocolVersion is "<major>.<minor>".
var ProtocolVersion = fmt.Sprintf("%d.%d", ProtocolMajor, ProtocolMinor)

// Transport defaults.
const (
	// DefaultPortName is the virtio-serial port name (QEMU's
	// `virtserialport,name=`).
	DefaultPortName = "banger.agent"
	// DefaultPortPath is where udev links the port in the guest.
	DefaultPortPath = "/dev/virtio-ports/" + DefaultPortName
	// DefaultVsockPort is the guest's vsock port under Firecracker.
	DefaultVsockPort = 1024
)

// Handshake lines (see the package documentation).
const (
	lineMarker    = "BANGER-AGENT-"
	SyncPrefix    = "BANGER-AGENT-SYNC "
	OKPrefix      = "BANGER-AGENT-OK "
	StartPrefix   = "BANGER-AGENT-START "
	StartedPrefix = "BANGER-AGENT-STARTED "

	// MaxLineLength bounds a handshake line; longer lines are junk.
	MaxLineLength = 256
	// SyncInterval is how often the host repeats its SYNC line until the
	// guest answers.
	SyncInterval = 250 * time.Millisecond
)

// Framing limits.
const (
	MaxFramePayload = 1 << 20
	DataChunk       = 32 << 10
	// OutputGrace bounds how long the agent forwards output after the
	// command exited (see exec in the package documentation).
	OutputGrace = time.Second
	// StdinWindow is the stdin the agent buffers for a command that does
	// not read it; see FrameCredit.
	StdinWindow = 256 << 10
)

// Frame types.
const (
	FrameStdin      byte = 'I' // host → guest: stdin bytes
	FrameCloseStdin byte = 'C' // host → guest: stdin EOF
	FrameResize     byte = 'W' // host → guest: rows, cols (uint16 BE each)
	FrameSignal     byte = 'S' // host → guest: signal name
	FrameStdout     byte = 'O' // guest → host: stdout (or PTY) bytes
	FrameStderr     byte = 'E' // guest → host: stderr bytes
	FrameCredit     byte = 'G' // guest → host: uint32 BE more stdin bytes the host may send
	FrameExit       byte = 'X' // guest → host: JSON ExitStatus (exec) or EndStatus (get)
	FrameData       byte = 'D' // tar bytes (put: host → guest, get: guest → host)
	FrameEnd        byte = 'Z' // host → guest: end of put data
	FrameAbort      byte = 'A' // host → guest: put aborted, payload is the reason
)

// Operation names (Request.Op).
const (
	OpHealth = "health"
	OpExec   = "exec"
	OpPut    = "put"
	OpGet    = "get"
	OpPorts  = "ports"
)

// Request is the JSON line that opens every stream.
type Request struct {
	Op string `json:"op"`
	// Exec is set for OpExec.
	Exec *ExecRequest `json:"exec,omitempty"`
	// Dest is the absolute guest directory for OpPut; it is created if
	// missing.
	Dest string `json:"dest,omitempty"`
	// Paths are the absolute guest paths for OpGet.
	Paths []string `json:"paths,omitempty"`
}

// Response is the guest's JSON line answering a Request.
type Response struct {
	// Error is set when the request failed.
	Error string `json:"error,omitempty"`
	// Health answers OpHealth.
	Health *Health `json:"health,omitempty"`
	// Ports answers OpPorts.
	Ports []ListeningPort `json:"ports,omitempty"`
	// PID is the started command's pid (OpExec).
	PID int `json:"pid,omitempty"`
	// StdinWindow is how many stdin bytes the host may send before it
	// receives FrameCredit (OpExec).
	StdinWindow int `json:"stdin_window,omitempty"`
	// Entries is the number of tar entries extracted (OpPut).
	Entries int `json:"entries,omitempty"`
}

// EndStatus is the payload of the FrameExit that ends an OpGet archive.
type EndStatus struct {
	Error string `json:"error,omitempty"`
}

// Health describes the agent and the guest boot it runs in.
type Health struct {
	// AgentVersion is the agent binary's version (its -version).
	AgentVersion string `json:"agent_version"`
	// ProtocolVersion is "<major>.<minor>".
	ProtocolVersion string `json:"protocol_version"`
	// BootID is /proc/sys/kernel/random/boot_id: it changes on every boot.
	BootID string `json:"boot_id"`
	// UptimeSeconds is the first field of /proc/uptime.
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Hostname is the guest's hostname.
	Hostname string `json:"hostname"`
}

// ExecRequest describes a command to run in the guest.
type ExecRequest struct {
	// Argv is the command and its arguments, passed exactly (no shell).
	// Argv[0] without a slash is looked up in the command's PATH.
	Argv []string `json:"argv"`
	// Env holds KEY=VALUE additions to the default environment (PATH,
	// HOME=/root, USER, LOGNAME, SHELL, and TERM with a PTY); a key given
	// here replaces the default.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory; default HOME (/root), or / if it does
	// not exist.
	Dir string `json:"dir,omitempty"`
	// TTY runs the command on a new pseudo-terminal (its controlling
	// terminal); stdout and stderr are then one stream.
	TTY bool `json:"tty,omitempty"`
	// Rows and Cols are the initial terminal size with TTY (default 24x80).
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Term is TERM with TTY (default xterm-256color).
	Term string `json:"term,omitempty"`
}

// WinSize is a terminal size.
type WinSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExitStatus is how a command ended.
type ExitStatus struct {
	// Code is the exit code, or -1 when the command was killed by a signal.
	Code int `json:"code"`
	// Signal is the terminating signal's name ("SIGKILL"), if any.
	Signal string `json:"signal,omitempty"`
	// SignalNumber is the terminating signal's number, if any.
	SignalNumber int `json:"signal_number,omitempty"`
}

// ShellCode is the status a shell would report: Code, or 128+signal.
func (s ExitStatus) ShellCode() int {
	if s.Signal != "" {
		return 128 + s.SignalNumber
	}
	return s.Code
}

func (s ExitStatus) String() string {
	if s.Signal != "" {
		return "killed by " + s.Signal
	}
	return "exit status " + strconv.Itoa(s.Code)
}

// ListeningPort is a listening TCP socket or a bound, unconnected UDP socket
// in the guest.
type ListeningPort struct {
	// Proto is "tcp", "tcp6", "udp" or "udp6" (the /proc/net file).
	Proto string `json:"proto"`
	// Address is the local address ("0.0.0.0", "::", "127.0.0.1").
	Address string `json:"address"`
	Port    int    `json:"port"`
	// Inode is the socket's inode.
	Inode uint64 `json:"inode"`
	// PID and Process (its comm) own the socket, when found.
	PID     int    `json:"pid,omitempty"`
	Process string `json:"process,omitempty"`
}

// VersionError is returned by the host when the agent speaks another major
// protocol version.
type VersionError struct {
	Agent string // the agent's protocol version, "<major>.<minor>"
	Host  string // ours
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("the image's agent is v%s, banger needs v%d: re-pull or re-register the image "+
		"(agent protocol %s, banger protocol %s)", majorOf(e.Agent), ProtocolMajor, e.Agent, e.Host)
}

func majorOf(v string) string {
	major, _, _ := strings.Cut(v, ".")
	return major
}

// ParseVersion parses "<major>.<minor>".
func ParseVersion(v string) (major, minor int, err error) {
	a, b, ok := strings.Cut(v, ".")
	if !ok {
		return 0, 0, fmt.Errorf("bad protocol version %q", v)
	}
	if major, err = strconv.Atoi(a); err != nil {
		return 0, 0, fmt.Errorf("bad protocol version %q", v)
	}
	if minor, err = strconv.Atoi(b); err != nil {
		return 0, 0, fmt.Errorf("bad protocol version %q", v)
	}
	return major, minor, nil
}

// ReadLine reads one handshake line from r, without the newline. A line
// longer than MaxLineLength is consumed and returned truncated with
// long=true. It reads through a *bufio.Reader so that it never consumes past
// the newline of what it returns.
func ReadLine(r *bufio.Reader) (line string, long bool, err error) {
	var buf []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			return string(buf), long, err
		}
		if b == '\n' {
			return string(buf), long, nil
		}
		if len(buf) < MaxLineLength {
			buf = append(buf, b)
		} else {
			long = true
		}
	}
}

// FindMarker returns the part of line starting at the last "BANGER-AGENT-"
// marker, or "" when it has none.
func FindMarker(line string) string {
	i := strings.LastIndex(line, lineMarker)
	if i < 0 {
		return ""
	}
	return strings.TrimRight(line[i:], "\r")
}

// BufferedConn is a stream whose reads come through a bufio.Reader that may
// already hold bytes of it (read during the handshake).
type BufferedConn struct {
	R *bufio.Reader
	io.WriteCloser
}

func (c *BufferedConn) Read(p []byte) (int, error) { return c.R.Read(p) }

// WriteFrame writes one frame.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFramePayload {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(payload), MaxFramePayload)
	}
	buf := make([]byte, 5+len(payload))
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame.
func ReadFrame(r io.Reader) (typ byte, payload []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:5])
	if n > MaxFramePayload {
		return 0, nil, fmt.Errorf("frame of %d bytes exceeds %d", n, MaxFramePayload)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], payload, nil
}

// FrameWriter serialises frames from several goroutines onto one stream.
type FrameWriter struct {
	mu sync.Mutex
	W  io.Writer
}

// Frame writes one frame.
func (f *FrameWriter) Frame(typ byte, payload []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return WriteFrame(f.W, typ, payload)
}

// JSON writes one frame whose payload is v as JSON.
func (f *FrameWriter) JSON(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return f.Frame(typ, b)
}

// Data writes p as frames of type typ, in chunks of at most DataChunk bytes.
func (f *FrameWriter) Data(typ byte, p []byte) error {
	for len(p) > 0 {
		n := min(len(p), DataChunk)
		if err := f.Frame(typ, p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// DataWriter is an io.Writer that sends everything written as frames of one
// type.
type DataWriter struct {
	F   *FrameWriter
	Typ byte
}

func (d DataWriter) Write(p []byte) (int, error) {
	if err := d.F.Data(d.Typ, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteJSONLine writes v as one JSON line.
func WriteJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadJSONLine reads one JSON line (at most MaxFramePayload bytes) into v.
func ReadJSONLine(r *bufio.Reader, v any) error {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > MaxFramePayload {
			return errors.New("JSON line too long")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		break
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	return dec.Decode(v)
}

// EncodeWinSize is the payload of a FrameResize.
func EncodeWinSize(ws WinSize) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint16(b[0:2], ws.Rows)
	binary.BigEndian.PutUint16(b[2:4], ws.Cols)
	return b
}

// DecodeWinSize parses a FrameResize payload.
func DecodeWinSize(b []byte) (WinSize, error) {
	if len(b) != 4 {
		return WinSize{}, fmt.Errorf("resize frame of %d bytes, want 4", len(b))
	}
	return WinSize{Rows: binary.BigEndian.Uint16(b[0:2]), Cols: binary.BigEndian.Uint16(b[2:4])}, nil
}
