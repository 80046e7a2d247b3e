package vm

import (
	"context"
	"slices"

	"banger/internal/api"
	"banger/internal/netfilter"
	"banger/internal/rpc"
	"banger/internal/store"
)

// checkPublish refuses a host port another VM (not exceptID) publishes or a
// program on the host listens on.
func checkPublish(vms []store.VM, pm netfilter.PortMapping, exceptID string) error {
	for _, v := range vms {
		if v.ID == exceptID {
			continue
		}
		for _, spec := range v.Publish {
			if other, err := netfilter.ParsePublish(spec); err == nil && other.Overlaps(pm) {
				return rpc.Errorf(rpc.CodeConflict, "-p %s: vm %s already publishes %s", pm, v.Name, spec)
			}
		}
	}
	if err := netfilter.CheckHostPortFree(pm); err != nil {
		return rpc.Errorf(rpc.CodeConflict, "-p %s: %v", pm, err)
	}
	return nil
}

// SetNetwork changes a VM's NAT and published ports. A running VM's
// firewall rules change at once; a stopped VM's at its next start.
func (s *Service) SetNetwork(ctx context.Context, p api.VMNetworkParams) (api.VM, error) {
	var add, rm []netfilter.PortMapping
	for _, list := range []struct {
		specs []string
		into  *[]netfilter.PortMapping
	}{{p.AddPublish, &add}, {p.RemovePublish, &rm}} {
		for _, spec := range list.specs {
			pm, err := netfilter.ParsePublish(spec)
			if err != nil {
				return api.VM{}, invalid("port %q: %v", spec, err)
			}
			*list.into = append(*list.into, pm)
		}
	}
	v, unlock, err := s.getLocked(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	next := v
	next.Publish = slices.Clone(v.Publish)
	if p.NAT != nil {
		next.NAT = *p.NAT
	}
	for _, pm := range rm {
		i := slices.Index(next.Publish, pm.String())
		if i < 0 {
			return api.VM{}, rpc.Errorf(rpc.CodeNotFound, "vm %s does not publish %s (see `banger vm port list %s`)", v.Name, pm, v.Name)
		}
		next.Publish = slices.Delete(next.Publish, i, i+1)
	}
	if len(add) > 0 {
		s.reserve.Lock() // published ports are unique across VMs, like names
		defer s.reserve.Unlock()
		vms, err := s.Store.ListVMs(ctx)
		if err != nil {
			return api.VM{}, err
		}
		for _, pm := range add {
			if slices.Contains(next.Publish, pm.String()) {
				continue
			}
			if err := checkPublish(vms, pm, v.ID); err != nil {
				return api.VM{}, err
			}
			next.Publish = append(next.Publish, pm.String())
		}
	}
	if next.State == api.StateRunning && s.Firewall {
		rules, err := firewallRules(next)
		if err != nil {
			return api.VM{}, err
		}
		if err := s.Host.FirewallApply(ctx, rules); err != nil {
			return api.VM{}, err
		}
	}
	if err := s.save(&next); err != nil {
		return api.VM{}, err
	}
	s.Log.Info("network options changed", "vm", v.Name, "nat", next.NAT, "publish", next.Publish)
	return s.View(next), nil
}
