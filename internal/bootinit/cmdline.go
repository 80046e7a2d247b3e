package bootinit

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// DefaultInit is the program switched to when init= is not given.
const DefaultInit = "/sbin/init"

// Config is what banger-init reads from the kernel command line.
type Config struct {
	Root       string // root device: /dev/..., UUID=..., LABEL=...
	RootFSType string // default ext4
	RootFlags  string // extra mount options
	Init       string // default DefaultInit
	InitGiven  bool   // init= was on the command line
	Hostname   string
	IP         netip.Prefix // banger.ip; invalid (zero) when not given
	Gateway    netip.Addr
	DNS        netip.Addr
	Work       string // work disk device, mounted on /root
	Modules    string // kernel modules image device, mounted read-only on /lib/modules/RELEASE
	AgentVsock uint32 // 0: the agent serves the virtio-serial port
	ForceInit  bool   // banger.init=banger
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]*$`)

// splitCmdline splits a kernel command line into words as the kernel does:
// on spaces, with double quotes grouping (and removed).
func splitCmdline(s string) []string {
	var words []string
	var cur strings.Builder
	inWord, quoted := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// Parse reads the kernel command line. Unknown words are ignored (they are
// the kernel's); a bad banger.* value or a missing root= is an error naming
// the parameter.
func Parse(cmdline string) (Config, error) {
	c := Config{RootFSType: "ext4", Init: DefaultInit}
	for _, w := range splitCmdline(cmdline) {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "root":
			c.Root = v
		case "rootfstype":
			c.RootFSType = v
		case "rootflags":
			c.RootFlags = v
		case "init":
			c.Init, c.InitGiven = v, true
			if !strings.HasPrefix(v, "/") {
				err = fmt.Errorf("must be an absolute path")
			}
		case "banger.hostname":
			c.Hostname = v
			if !hostnameRE.MatchString(v) || len(v) > 253 {
				err = fmt.Errorf("letters, digits, '.' and '-' only, not starting with '-'")
			}
		case "banger.ip":
			c.IP, err = netip.ParsePrefix(v)
			if err == nil && !c.IP.Addr().Is4() {
				err = fmt.Errorf("want an IPv4 ADDR/PREFIX")
			}
		case "banger.gw":
			c.Gateway, err = netip.ParseAddr(v)
		case "banger.dns":
			c.DNS, err = netip.ParseAddr(v)
		case "banger.work":
			c.Work = v
		case "banger.modules":
			c.Modules = v
			if !strings.HasPrefix(v, "/dev/") && !strings.HasPrefix(v, "UUID=") && !strings.HasPrefix(v, "LABEL=") {
				err = fmt.Errorf("want /dev/..., UUID=... or LABEL=...")
			}
		case "banger.agent_vsock":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 32)
			c.AgentVsock = uint32(n)
			if err == nil && n == 0 {
				err = fmt.Errorf("port 0")
			}
		case "banger.init":
			switch v {
			case "banger":
				c.ForceInit = true
			case "auto", "":
				c.ForceInit = false
			default:
				err = fmt.Errorf("want banger or auto")
			}
		}
		if err != nil {
			return Config{}, fmt.Errorf("invalid %s=%q on the kernel command line: %v", k, v, err)
		}
	}
	if c.Root == "" {
		return Config{}, fmt.Errorf("no root= on the kernel command line")
	}
	if c.Gateway.IsValid() && !c.IP.IsValid() {
		return Config{}, fmt.Errorf("banger.gw=%s given without banger.ip", c.Gateway)
	}
	return c, nil
}
