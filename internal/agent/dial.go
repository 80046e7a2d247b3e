package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// UnixDialer connects to a Unix socket: QEMU's virtio-serial chardev
// (`-chardev socket,id=agent,path=PATH,server=on,wait=off`).
func UnixDialer(path string) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// FirecrackerDialer reaches the guest's vsock port through Firecracker's
// vsock Unix socket (see DialFirecrackerVsock).
func FirecrackerDialer(udsPath string, port uint32) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		return DialFirecrackerVsock(ctx, udsPath, port)
	}
}

// ErrVsockRefused means Firecracker accepted the connection but nothing in
// the guest listens on the vsock port (yet).
var ErrVsockRefused = errors.New("nothing listens on the guest's vsock port")

// DialFirecrackerVsock connects to the host side of a Firecracker vsock
// device (the Unix socket given as uds_path to PUT /vsock) and asks for the
// guest's port: it sends "CONNECT <port>\n" and expects "OK <host port>\n",
// after which the connection is a byte stream to the guest's listener.
// Firecracker closes the connection instead when the guest does not listen
// on the port; that error wraps ErrVsockRefused.
func DialFirecrackerVsock(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	line, err := func() (string, error) {
		if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
			return "", err
		}
		// Byte by byte: nothing after the newline belongs to us.
		var buf []byte
		var b [1]byte
		for len(buf) < MaxLineLength {
			if _, err := io.ReadFull(conn, b[:]); err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					return "", fmt.Errorf("%w %d (Firecracker closed the connection)", ErrVsockRefused, port)
				}
				return "", err
			}
			if b[0] == '\n' {
				return string(buf), nil
			}
			buf = append(buf, b[0])
		}
		return "", fmt.Errorf("vsock handshake: answer longer than %d bytes", MaxLineLength)
	}()
	if !stop() {
		conn.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock %s port %d: %w", udsPath, port, err)
	}
	if f := strings.Fields(line); len(f) != 2 || f[0] != "OK" {
		conn.Close()
		return nil, fmt.Errorf("vsock %s port %d: unexpected answer %q", udsPath, port, line)
	}
	return conn, nil
}
