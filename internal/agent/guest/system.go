package guest

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"banger/internal/agent"

	"golang.org/x/sys/unix"
)

// Health reports the agent's version and the guest's boot id, uptime and
// hostname.
func (s *Server) Health() (agent.Health, error) {
	h := agent.Health{AgentVersion: s.Version, ProtocolVersion: agent.ProtocolVersion}
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return h, err
	}
	h.BootID = strings.TrimSpace(string(b))
	b, err = os.ReadFile("/proc/uptime")
	if err != nil {
		return h, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return h, fmt.Errorf("/proc/uptime: empty")
	}
	if h.UptimeSeconds, err = strconv.ParseFloat(f[0], 64); err != nil {
		return h, fmt.Errorf("/proc/uptime: %w", err)
	}
	if h.Hostname, err = os.Hostname(); err != nil {
		return h, err
	}
	return h, nil
}

// ResolvePort returns path if it exists. Otherwise, for a path under
// /dev/virtio-ports/ (a udev link), it looks for the port by name in
// /sys/class/virtio-ports/*/name and returns its /dev/vportNpM node.
func ResolvePort(path string) (string, error) {
	_, err := os.Stat(path)
	if err == nil || !os.IsNotExist(err) {
		return path, err
	}
	const links = "/dev/virtio-ports/"
	if !strings.HasPrefix(path, links) {
		return "", err
	}
	name := strings.TrimPrefix(path, links)
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, rerr := os.ReadFile(n)
		if rerr != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(n))
		if _, serr := os.Stat(dev); serr != nil {
			return "", fmt.Errorf("virtio port %q is %s: %w", name, dev, serr)
		}
		return dev, nil
	}
	return "", fmt.Errorf("no virtio port named %q (is the virtio_console module loaded?): %w", name, err)
}

// ListeningPorts parses proc's net/tcp, tcp6, udp and udp6 for listening TCP
// sockets and bound, unconnected UDP sockets, and finds their processes
// through proc/*/fd.
func ListeningPorts(proc string) ([]agent.ListeningPort, error) {
	var ports []agent.ListeningPort
	for _, f := range []struct {
		file, proto string
		tcp         bool
	}{
		{"net/tcp", "tcp", true}, {"net/tcp6", "tcp6", true},
		{"net/udp", "udp", false}, {"net/udp6", "udp6", false},
	} {
		b, err := os.ReadFile(filepath.Join(proc, f.file))
		if os.IsNotExist(err) {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		lines := strings.Split(string(b), "\n")
		for _, line := range lines[1:] {
			p, ok, err := parseSocketLine(line, f.tcp)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f.file, err)
			}
			if ok {
				p.Proto = f.proto
				ports = append(ports, p)
			}
		}
	}
	if len(ports) == 0 {
		return ports, nil
	}
	owners := socketOwners(proc, ports)
	for i := range ports {
		if o, ok := owners[ports[i].Inode]; ok {
			ports[i].PID, ports[i].Process = o.pid, o.comm
		}
	}
	sort.SliceStable(ports, func(i, j int) bool {
		if ports[i].Port != ports[j].Port {
			return ports[i].Port < ports[j].Port
		}
		return ports[i].Proto < ports[j].Proto
	})
	return ports, nil
}

// TCP_LISTEN and TCP_CLOSE in /proc/net's "st" column.
const (
	stateListen = 0x0A
	stateClose  = 0x07
)

// parseSocketLine parses one /proc/net/{tcp,udp}[6] line:
//
//	sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
func parseSocketLine(line string, tcp bool) (agent.ListeningPort, bool, error) {
	f := strings.Fields(line)
	if len(f) < 10 {
		return agent.ListeningPort{}, false, nil
	}
	st, err := strconv.ParseUint(f[3], 16, 8)
	if err != nil {
		return agent.ListeningPort{}, false, fmt.Errorf("bad state %q", f[3])
	}
	_, remPort, err := parseAddr(f[2])
	if err != nil {
		return agent.ListeningPort{}, false, err
	}
	if tcp && st != stateListen || !tcp && (st != stateClose || remPort != 0) {
		return agent.ListeningPort{}, false, nil
	}
	addr, port, err := parseAddr(f[1])
	if err != nil {
		return agent.ListeningPort{}, false, err
	}
	if port == 0 {
		return agent.ListeningPort{}, false, nil
	}
	inode, err := strconv.ParseUint(f[9], 10, 64)
	if err != nil {
		return agent.ListeningPort{}, false, fmt.Errorf("bad inode %q", f[9])
	}
	return agent.ListeningPort{Address: addr.String(), Port: port, Inode: inode}, true, nil
}

// parseAddr parses "0100007F:1F90": the address is the kernel's __be32
// words printed as native-endian integers, the port a plain hex number.
func parseAddr(s string) (netip.Addr, int, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("bad port in %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return addr, int(port), nil
}

type owner struct {
	pid  int
	comm string
}

// socketOwners maps the ports' socket inodes to the lowest pid holding them.
func socketOwners(proc string, ports []agent.ListeningPort) map[uint64]owner {
	want := make(map[uint64]bool, len(ports))
	for _, p := range ports {
		want[p.Inode] = true
	}
	ents, _ := os.ReadDir(proc)
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	owners := make(map[uint64]owner)
	for _, pid := range pids {
		dir := filepath.Join(proc, strconv.Itoa(pid), "fd")
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue // gone, or a kernel thread
		}
		var comm string
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, fd.Name()))
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]"), 10, 64)
			if err != nil || !want[ino] {
				continue
			}
			if _, seen := owners[ino]; seen {
				continue
			}
			if comm == "" {
				b, _ := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "comm"))
				comm = strings.TrimSpace(string(b))
			}
			owners[ino] = owner{pid: pid, comm: comm}
		}
	}
	return owners
}

// makeRawIfTTY puts f in raw mode if it is a terminal, so that bytes pass
// unchanged in both directions.
func makeRawIfTTY(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var terr error
	err = rc.Control(func(fd uintptr) {
		t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		if err != nil {
			return // not a terminal
		}
		t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
		t.Oflag &^= unix.OPOST
		t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag &^= unix.CSIZE | unix.PARENB
		t.Cflag |= unix.CS8
		t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
		terr = unix.IoctlSetTermios(int(fd), unix.TCSETS, t)
	})
	if err != nil {
		return err
	}
	return terr
}
