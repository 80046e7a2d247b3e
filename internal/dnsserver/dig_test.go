package dnsserver

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// digResult is what dig printed: the header status, the flags and the
// answer section's records (one string of fields each).
type digResult struct {
	status  string
	flags   []string
	answers [][]string
	out     string
}

var (
	digStatus = regexp.MustCompile(`status: ([A-Z]+)`)
	digFlags  = regexp.MustCompile(`;; flags: ([a-z ]+);`)
)

// needDig returns the dig binary; without it the test is skipped, except in
// CI where it must be installed (Debian package dnsutils).
func needDig(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("dig")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("dig not found: install the Debian package dnsutils")
		}
		t.Skip("dig not found (apt-get install dnsutils)")
	}
	return p
}

// runDig queries server (IP:port) with the real dig. Bounded: two tries of
// two seconds each at most.
func runDig(t *testing.T, dig string, server netip.AddrPort, args ...string) digResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	full := append([]string{"@" + server.Addr().String(), "-p", strconv.Itoa(int(server.Port())),
		"+time=2", "+tries=2", "+noall", "+comments", "+answer"}, args...)
	out, err := exec.CommandContext(ctx, dig, full...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s: %v\n%s", strings.Join(full, " "), err, out)
	}
	return parseDig(string(out))
}

// parseDig reads dig's +comments +answer output.
func parseDig(out string) digResult {
	r := digResult{out: out}
	if m := digStatus.FindStringSubmatch(r.out); m != nil {
		r.status = m[1]
	}
	if m := digFlags.FindStringSubmatch(r.out); m != nil {
		r.flags = strings.Fields(m[1])
	}
	inAnswer := false
	for _, line := range strings.Split(r.out, "\n") {
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION"):
			inAnswer = true
		case strings.HasPrefix(line, ";"), strings.TrimSpace(line) == "":
			if inAnswer && strings.TrimSpace(line) == "" {
				inAnswer = false
			}
		case inAnswer:
			r.answers = append(r.answers, strings.Fields(line))
		}
	}
	return r
}

func (r digResult) want(t *testing.T, status string, answers ...string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %q, want %s\n%s", r.status, status, r.out)
	}
	var got []string
	for _, a := range r.answers {
		// NAME TTL CLASS TYPE RDATA...: compare "NAME TTL TYPE RDATA".
		if len(a) >= 5 {
			got = append(got, strings.Join(append([]string{a[0], a[1], a[3]}, a[4:]...), " "))
		}
	}
	if strings.Join(got, "\n") != strings.Join(answers, "\n") {
		t.Fatalf("answers\n%s\nwant\n%s\n%s", strings.Join(got, "\n"), strings.Join(answers, "\n"), r.out)
	}
}

func (r digResult) hasFlag(f string) bool {
	for _, x := range r.flags {
		if x == f {
			return true
		}
	}
	return false
}

// TestDig checks the server against the real dig binary.
func TestDig(t *testing.T) {
	dig := needDig(t)
	up := startUpstream(t, "192.0.2.10")
	s, _ := startServer(t, Options{
		Upstreams:    []string{up.addr},
		ReverseZones: []netip.Prefix{netip.MustParsePrefix("10.213.0.0/24")},
	})
	srv := s.Addrs()[0]
	if err := s.Replace(map[string]netip.Addr{"web": mustAddr("10.213.0.5"), "db": mustAddr("10.213.0.6")}); err != nil {
		t.Fatal(err)
	}

	t.Run("A", func(t *testing.T) {
		r := runDig(t, dig, srv, "web.vm", "A")
		r.want(t, "NOERROR", "web.vm. 5 A 10.213.0.5")
		if !r.hasFlag("aa") {
			t.Errorf("flags %v, want aa", r.flags)
		}
		runDig(t, dig, srv, "+tcp", "db.vm", "A").want(t, "NOERROR", "db.vm. 5 A 10.213.0.6")
	})
	t.Run("case", func(t *testing.T) {
		runDig(t, dig, srv, "WeB.Vm", "A").want(t, "NOERROR", "WeB.Vm. 5 A 10.213.0.5")
	})
	t.Run("PTR", func(t *testing.T) {
		runDig(t, dig, srv, "-x", "10.213.0.5").want(t, "NOERROR", "5.0.213.10.in-addr.arpa. 5 PTR web.vm.")
		runDig(t, dig, srv, "-x", "10.213.0.99").want(t, "NXDOMAIN")
	})
	t.Run("NXDOMAIN", func(t *testing.T) {
		runDig(t, dig, srv, "nosuch.vm", "A").want(t, "NXDOMAIN")
	})
	t.Run("AAAA NODATA", func(t *testing.T) {
		runDig(t, dig, srv, "web.vm", "AAAA").want(t, "NOERROR")
	})
	t.Run("forwarded", func(t *testing.T) {
		r := runDig(t, dig, srv, "example.test", "A")
		r.want(t, "NOERROR", "example.test. 300 A 192.0.2.10")
		if r.hasFlag("aa") {
			t.Errorf("a forwarded answer has aa: %v", r.flags)
		}
		runDig(t, dig, srv, "missing.test", "A").want(t, "NXDOMAIN")
	})
	t.Run("truncated", func(t *testing.T) {
		// dig (EDNS 1232) gets a truncated reply over UDP and retries over TCP.
		r := runDig(t, dig, srv, "big.test", "TXT")
		if r.status != "NOERROR" || len(r.answers) != bigTXT {
			t.Fatalf("big.test TXT: status %s, %d answers, want all %d\n%s", r.status, len(r.answers), bigTXT, r.out)
		}
	})
	t.Run("Remove", func(t *testing.T) {
		s.Remove("web")
		runDig(t, dig, srv, "web.vm", "A").want(t, "NXDOMAIN")
		runDig(t, dig, srv, "-x", "10.213.0.5").want(t, "NXDOMAIN")
	})
	t.Run("Replace", func(t *testing.T) {
		if err := s.Replace(map[string]netip.Addr{"new": mustAddr("10.213.0.20")}); err != nil {
			t.Fatal(err)
		}
		runDig(t, dig, srv, "new.vm", "A").want(t, "NOERROR", "new.vm. 5 A 10.213.0.20")
		runDig(t, dig, srv, "db.vm", "A").want(t, "NXDOMAIN")
		if err := s.Set("web", mustAddr("10.213.0.5")); err != nil {
			t.Fatal(err)
		}
		runDig(t, dig, srv, "web.vm", "A").want(t, "NOERROR", "web.vm. 5 A 10.213.0.5")
	})
}
