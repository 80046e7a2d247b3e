package guest

import (
	"strings"
	"syscall"
	"testing"
)

func TestParseSocketLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		tcp  bool
		ok   bool
		addr string
		port int
	}{
		// Real lines (little-endian host).
		{"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0", true, true, "127.0.0.1", 8080},
		{"   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0", true, true, "0.0.0.0", 22},
		// Established, not listening.
		{"   2: 0100007F:1F90 0100007F:A2B4 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1", true, false, "", 0},
		{"   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0", true, true, "::1", 8081},
		{"   0: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 100 0 0 10 0", true, true, "::", 53},
		// UDP: bound and unconnected (07, remote port 0) is "listening".
		{"  10: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 6666 2 0000000000000000 0", false, true, "127.0.0.53", 53},
		{"  11: 0100007F:9C40 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 7777 2 0000000000000000 0", false, false, "", 0},
		{"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode", true, false, "", 0},
	} {
		p, ok, err := parseSocketLine(tc.line, tc.tcp)
		if ok != tc.ok || (ok && (p.Address != tc.addr || p.Port != tc.port)) {
			t.Errorf("%q: %+v %v %v", tc.line, p, ok, err)
		}
	}
}

func TestParseSignal(t *testing.T) {
	for name, want := range map[string]syscall.Signal{"SIGTERM": syscall.SIGTERM, "int": syscall.SIGINT, " HUP ": syscall.SIGHUP, "SIGKILL": syscall.SIGKILL} {
		if got, ok := ParseSignal(name); !ok || got != want {
			t.Errorf("%q: %v %v", name, got, ok)
		}
	}
	for _, bad := range []string{"SIGSEGV", "9", "", "BOGUS"} {
		if _, ok := ParseSignal(bad); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestResolvePort(t *testing.T) {
	if p, err := ResolvePort("/dev/null"); err != nil || p != "/dev/null" {
		t.Fatalf("%q %v", p, err)
	}
	_, err := ResolvePort("/dev/virtio-ports/banger.no-such-port")
	if err == nil || !strings.Contains(err.Error(), `no virtio port named "banger.no-such-port"`) || !strings.Contains(err.Error(), "virtio_console") {
		t.Fatalf("err = %v", err)
	}
	if _, err := ResolvePort("/no/such/path"); err == nil {
		t.Fatal("a missing path resolved")
	}
}
