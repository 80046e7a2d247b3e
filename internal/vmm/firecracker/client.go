package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// defaultRequestTimeout bounds one API call whose context has no deadline, so
// a wedged Firecracker cannot hang the daemon.
const defaultRequestTimeout = 30 * time.Second

// Client talks to one Firecracker process over its API Unix socket. The
// request types below mirror the definitions of Firecracker's swagger spec
// (src/firecracker/swagger/firecracker.yaml) field for field; optional fields
// are omitempty so that Firecracker applies its own defaults.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the API socket at socketPath. It does not
// connect until the first call.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: tr}}
}

// Socket is the API socket path the client dials.
func (c *Client) Socket() string { return c.socket }

// Close drops idle connections. The client stays usable.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// APIError is a non-2xx answer from Firecracker.
type APIError struct {
	Method, Path string
	StatusCode   int
	// FaultMessage is Firecracker's own explanation (Error.fault_message).
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = "(no fault_message)"
	}
	return fmt.Sprintf("firecracker %s %s: %d %s: %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode), msg)
}

// MachineConfig is the spec's MachineConfiguration (PUT /machine-config).
type MachineConfig struct {
	VCPUCount  int   `json:"vcpu_count"`
	MemSizeMiB int   `json:"mem_size_mib"`
	SMT        *bool `json:"smt,omitempty"`
}

// BootSource is the spec's BootSource (PUT /boot-source).
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is the spec's Drive (PUT /drives/{drive_id}) for a virtio-block
// device. drive_id and is_root_device are required; path_on_host and
// is_read_only are required for virtio-block (the spec leaves them optional
// only for vhost-user-block, which banger does not use).
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	// CacheType is "Unsafe" (Firecracker's default) or "Writeback".
	CacheType string `json:"cache_type,omitempty"`
	// IOEngine is "Sync" (default) or "Async".
	IOEngine string `json:"io_engine,omitempty"`
}

// NetworkInterface is the spec's NetworkInterface (PUT /network-interfaces/{iface_id}).
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is the spec's Vsock (PUT /vsock). Firecracker creates and listens on
// UDSPath for host-initiated connections ("CONNECT <port>\n").
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Logger is the spec's Logger (PUT /logger). Older Firecrackers open
// LogPath without creating it, and all write from offset 0 without
// truncating: give it a fresh, existing file.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"` // Error, Warning, Info, Debug, Trace, Off
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
}

// ActionType is the spec's InstanceActionInfo.action_type.
type ActionType string

const (
	ActionInstanceStart  ActionType = "InstanceStart"
	ActionSendCtrlAltDel ActionType = "SendCtrlAltDel" // x86_64 only (i8042)
	ActionFlushMetrics   ActionType = "FlushMetrics"
)

type instanceActionInfo struct {
	ActionType ActionType `json:"action_type"`
}

// InstanceInfo is the spec's InstanceInfo (GET /).
type InstanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running", "Paused"
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

// PutMachineConfig sets vCPUs and memory. Pre-boot only.
func (c *Client) PutMachineConfig(ctx context.Context, mc MachineConfig) error {
	return c.do(ctx, http.MethodPut, "/machine-config", mc, nil)
}

// PutBootSource sets kernel, command line and initrd. Pre-boot only.
func (c *Client) PutBootSource(ctx context.Context, bs BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", bs, nil)
}

// PutDrive attaches a block device. Drives appear in the guest in the
// order they are put (the first is /dev/vda). Pre-boot only.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.do(ctx, http.MethodPut, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// PutNetworkInterface attaches a virtio-net device backed by a TAP. Pre-boot only.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+url.PathEscape(n.IfaceID), n, nil)
}

// PutVsock attaches the virtio-vsock device. Pre-boot only.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutLogger points Firecracker's own log at a file.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// Action runs a synchronous action (InstanceStart, SendCtrlAltDel, FlushMetrics).
func (c *Client) Action(ctx context.Context, action ActionType) error {
	return c.do(ctx, http.MethodPut, "/actions", instanceActionInfo{ActionType: action}, nil)
}

// DescribeInstance returns the instance information (GET /).
func (c *Client) DescribeInstance(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// do sends one request. body, when not nil, is sent as JSON; out, when not
// nil, receives the JSON answer of a 2xx response.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultRequestTimeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	// The host part is ignored by the socket dialer; Firecracker's spec names "localhost".
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s via %s: %w", method, path, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		apiErr := &APIError{Method: method, Path: path, StatusCode: resp.StatusCode}
		var fault struct {
			FaultMessage string `json:"fault_message"`
		}
		if json.Unmarshal(data, &fault) == nil && fault.FaultMessage != "" {
			apiErr.FaultMessage = fault.FaultMessage
		} else {
			apiErr.FaultMessage = strings.TrimSpace(string(data))
		}
		return apiErr
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}
