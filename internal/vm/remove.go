package vm

import (
	"context"
	"errors"
	"fmt"
	"os"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/vmm"
)

// Delete removes a VM and everything banger made for it. A running VM is
// refused unless Force, which kills it first.
func (s *Service) Delete(ctx context.Context, p api.VMDeleteParams) error {
	v, unlock, err := s.getLocked(ctx, p.Name)
	if err != nil {
		return err
	}
	defer unlock()
	return s.deleteLocked(ctx, &v, p.Force)
}

func (s *Service) deleteLocked(ctx context.Context, v *store.VM, force bool) error {
	if m := s.machine(v.ID); m != nil {
		if !force {
			return rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s is running; stop it first (`banger vm stop %s`) or use --force", v.Name, v.Name)
		}
		s.setMachine(v.ID, nil)
		if err := killMachine(m); err != nil {
			return fmt.Errorf("kill vm %s: %w", v.Name, err)
		}
	} else if v.State == api.StateCreating {
		return rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s is being created; cancel the create instead", v.Name)
	}
	// Every step runs; errors are joined. The row goes last, so a failed
	// delete can be retried with its teardown identity intact.
	errs := []error{s.releaseRuntime(v)}
	if b, err := s.backendFor(*v); err == nil && v.Root.Path != "" {
		errs = append(errs, b.Remove(ctx, v.Root))
	}
	errs = append(errs, os.RemoveAll(v.Dir), s.Keys.Forget(v.Name))
	if err := errors.Join(errs...); err != nil {
		v.LastError = "delete incomplete: " + err.Error()
		s.save(v)
		return fmt.Errorf("delete vm %s: %w", v.Name, err)
	}
	s.mu.Lock()
	delete(s.locks, v.ID)
	s.mu.Unlock()
	s.Log.Info("vm deleted", "vm", v.Name)
	return s.Store.DeleteVM(ctx, v.ID)
}

// Prune deletes every VM that is not running.
func (s *Service) Prune(ctx context.Context) (api.VMPruneResult, error) {
	vms, err := s.Store.ListVMs(ctx)
	if err != nil {
		return api.VMPruneResult{}, err
	}
	res := api.VMPruneResult{Deleted: []string{}}
	var errs []error
	for _, v := range vms {
		if v.State != api.StateStopped {
			continue
		}
		unlock := s.mustLockVM(v.ID)
		cur, err := s.Store.GetVMByID(ctx, v.ID)
		if err == nil && cur.State == api.StateStopped {
			if err = s.deleteLocked(ctx, &cur, false); err == nil {
				res.Deleted = append(res.Deleted, cur.Name)
			}
		}
		unlock()
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// Reconcile brings every row to a true state after a daemon start: running
// VMMs are adopted (after verifying the pid is still the process we
// started), dead ones are cleaned up, and interrupted creates are rolled back.
func (s *Service) Reconcile(ctx context.Context) error {
	vms, err := s.Store.ListVMs(ctx)
	if err != nil {
		return err
	}
	keepTaps := map[string]bool{}
	for _, v := range vms {
		v := v
		switch {
		case v.State == api.StateCreating:
			s.Log.Warn("rolling back a create interrupted by a daemon exit", "vm", v.Name)
			errs := []error{hostnet.DeleteTap(v.Tap)}
			if v.Handle != nil {
				if d, err := s.driverFor(v); err == nil {
					if m, err := d.Adopt(ctx, *v.Handle); err == nil {
						errs = append(errs, killMachine(m))
					}
				}
			}
			if b, err := s.backendFor(v); err == nil && v.Root.Path != "" {
				errs = append(errs, b.Deactivate(ctx, v.Root), b.Remove(ctx, v.Root))
			}
			errs = append(errs, os.RemoveAll(v.Dir))
			if err := errors.Join(errs...); err != nil {
				s.Log.Error("rollback of interrupted create incomplete", "vm", v.Name, "err", err)
				continue
			}
			s.Store.DeleteVM(ctx, v.ID)
		case v.Handle != nil:
			d, adoptErr := s.driverFor(v)
			if adoptErr == nil {
				var m vmm.Machine
				if m, adoptErr = d.Adopt(ctx, *v.Handle); adoptErr == nil {
					s.setMachine(v.ID, m)
					s.watch(v.ID, m)
					keepTaps[v.Tap] = true
					if v.State != api.StateRunning {
						v.State = api.StateRunning
						s.save(&v)
					}
					s.Log.Info("adopted running VM", "vm", v.Name, "pid", v.Handle.PID)
					continue
				}
			}
			s.Log.Warn("VMM gone after daemon restart; cleaning up", "vm", v.Name, "pid", v.Handle.PID, "err", adoptErr)
			wasRunning := v.State == api.StateRunning
			if err := s.releaseRuntime(&v); err != nil {
				s.Log.Error("cleanup failed", "vm", v.Name, "err", err)
			}
			if wasRunning {
				v.LastError = "the VMM exited while the daemon was not running"
			}
			s.save(&v)
		default:
			if v.State != api.StateStopped {
				v.State = api.StateStopped
				s.save(&v)
			}
		}
	}
	// Taps of ours that no running VM owns are leftovers of a crash (pool
	// taps are capacity, not leftovers).
	prefix := s.Net.TapPrefix
	if prefix == "" {
		prefix = hostnet.DefaultTapPrefix
	}
	if links, err := hostnet.ListLinks(prefix); err == nil {
		for _, l := range links {
			if !keepTaps[l] && !s.Net.IsPoolTap(l) {
				s.Log.Warn("removing leftover tap", "tap", l)
				hostnet.DeleteTap(l)
			}
		}
	}
	return nil
}
