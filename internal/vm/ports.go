package vm

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/guest"
)

// Ports lists the listening sockets of running VMs (all of them when names
// is empty) as NAME.vm:PORT endpoints, through each guest's agent. Sockets
// bound to loopback are listed but not reachable from the host; TCP ports
// reachable from the host that answer HTTP get a link.
func (s *Service) Ports(ctx context.Context, names []string) ([]api.VMPort, error) {
	var vms []api.VM
	if len(names) == 0 {
		rows, err := s.Store.ListVMs(ctx)
		if err != nil {
			return nil, err
		}
		for _, v := range rows {
			if v.State == api.StateRunning {
				vms = append(vms, s.View(v))
			}
		}
	} else {
		for _, n := range names {
			v, err := s.get(ctx, n)
			if err != nil {
				return nil, err
			}
			vms = append(vms, s.View(v))
		}
	}
	out := []api.VMPort{}
	for _, view := range vms {
		v, err := s.get(ctx, view.Name)
		if err != nil {
			return nil, err
		}
		if !hasAgent(v) {
			return nil, fmt.Errorf("vm %s: listing ports needs the guest agent (the VM is %s, agent %v)", v.Name, v.State, view.Agent)
		}
		c, err := s.agentClient(ctx, v)
		if err != nil {
			return nil, err
		}
		ls, err := c.ListeningPorts(ctx)
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", v.Name, err)
		}
		seen := map[string]bool{}
		for _, l := range ls {
			proto := strings.TrimSuffix(l.Proto, "6")
			key := proto + "/" + strconv.Itoa(l.Port) + "/" + l.Address
			if seen[key] {
				continue
			}
			seen[key] = true
			p := api.VMPort{VM: v.Name, Proto: proto, Port: l.Port, Address: l.Address, Process: l.Process,
				Endpoint: net.JoinHostPort(guest.Alias(v.Name), strconv.Itoa(l.Port))}
			p.Reachable = !net.ParseIP(l.Address).IsLoopback()
			if p.Reachable && proto == "tcp" && answersHTTP(ctx, net.JoinHostPort(v.IP, strconv.Itoa(l.Port))) {
				p.URL = "http://" + p.Endpoint + "/"
			}
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.VM != b.VM {
			return a.VM < b.VM
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Proto < b.Proto
	})
	return out, nil
}

// answersHTTP reports whether addr answers an HTTP request within a short time.
func answersHTTP(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, "http://"+addr+"/", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}
