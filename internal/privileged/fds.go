package privileged

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// maxMessage bounds a request or response (a reconcile of many VMs is the
// largest: well under this).
const maxMessage = 1 << 20

// maxFDs is the most descriptors one response carries.
const maxFDs = 4

// writeWithFDs writes b on c, with files passed as SCM_RIGHTS on the same
// sendmsg (the receiver gets them with the first bytes).
func writeWithFDs(c *net.UnixConn, b []byte, files []*os.File) error {
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return err
	}
	if oobn != len(oob) {
		return errors.New("short write of file descriptors")
	}
	if n < len(b) {
		_, err = c.Write(b[n:])
	}
	return err
}

// readWithFDs reads c to EOF (at most maxMessage bytes) and returns the
// bytes and the descriptors that came with them, as files.
func readWithFDs(c *net.UnixConn) ([]byte, []*os.File, error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	files, perr := parseRights(oob[:oobn])
	if perr != nil {
		return nil, nil, perr
	}
	data := append([]byte(nil), buf[:n]...)
	if err == nil {
		rest, rerr := io.ReadAll(io.LimitReader(c, maxMessage))
		data = append(data, rest...)
		if rerr != nil {
			closeFiles(files)
			return nil, nil, rerr
		}
	}
	return data, files, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			closeFiles(files)
			return nil, err
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "helper-fd"))
		}
	}
	return files, nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
