package daemon

import (
	"context"
	"encoding/json"
	"fmt"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/rpc"
	"banger/internal/vm"
)

// register builds the dispatch table: one line per method.
func (d *Daemon) register() {
	h := d.server.Handle
	h(api.MethodDaemonStatus, func(ctx context.Context, _ json.RawMessage, _ *rpc.Stream) (any, error) {
		st := d.status
		st.Accel, st.AccelReason = d.driver.Accel()
		st.VMsRunning, st.VMsTotal = d.vms.Counts(ctx)
		st.TapPool = "off (network.tap_pool = 0)"
		if ready, size, err := d.taps.Stats(); size > 0 {
			st.TapPool = fmt.Sprintf("%d/%d ready", ready, size)
			if err != nil {
				st.TapPool += "; last refill failed: " + err.Error()
			}
		}
		return st, nil
	})
	h(api.MethodDaemonStop, func(ctx context.Context, raw json.RawMessage, _ *rpc.Stream) (any, error) {
		var p api.DaemonStopParams
		if len(raw) > 0 && string(raw) != "null" {
			if err := json.Unmarshal(raw, &p); err != nil {
				return nil, rpc.Errorf(rpc.CodeInvalidParams, "%v", err)
			}
		}
		if p.Cleanup {
			if err := d.cleanupHost(ctx); err != nil {
				return nil, err
			}
		}
		select {
		case <-d.stop:
		default:
			close(d.stop)
		}
		return struct{}{}, nil
	})

	h(api.MethodImageRegister, withParams(func(ctx context.Context, p api.ImageRegisterParams, _ *rpc.Stream) (any, error) {
		return d.vms.RegisterImage(ctx, p)
	}))
	h(api.MethodImageList, func(ctx context.Context, _ json.RawMessage, _ *rpc.Stream) (any, error) {
		return d.vms.ListImages(ctx)
	})
	h(api.MethodImageShow, withParams(func(ctx context.Context, p api.ImageRef, _ *rpc.Stream) (any, error) {
		return d.vms.ShowImage(ctx, p.Name)
	}))
	h(api.MethodImageDelete, withParams(func(ctx context.Context, p api.ImageRef, _ *rpc.Stream) (any, error) {
		return struct{}{}, d.vms.DeleteImage(ctx, p.Name)
	}))

	h(api.MethodImagePull, withParams(func(ctx context.Context, p api.ImagePullParams, _ *rpc.Stream) (any, error) {
		return d.vms.PullImage(ctx, p)
	}))
	h(api.MethodImagePromote, withParams(func(ctx context.Context, p api.ImageRef, _ *rpc.Stream) (any, error) {
		return d.vms.PromoteImage(ctx, p.Name)
	}))
	h(api.MethodImageCachePrune, withParams(func(ctx context.Context, p api.ImageCachePruneParams, _ *rpc.Stream) (any, error) {
		return d.vms.PruneImageCache(ctx, p)
	}))
	h(api.MethodKernelList, withParams(func(ctx context.Context, p api.KernelListParams, _ *rpc.Stream) (any, error) {
		if p.Available {
			return d.kernels.Available(ctx)
		}
		return d.kernels.List(ctx)
	}))
	h(api.MethodKernelShow, withParams(func(ctx context.Context, p api.KernelRef, _ *rpc.Stream) (any, error) {
		return d.kernels.Show(ctx, p.Name)
	}))
	h(api.MethodKernelImport, withParams(func(ctx context.Context, p api.KernelImportParams, s *rpc.Stream) (any, error) {
		k, err := d.kernels.Import(ctx, p.Name, kernel.Source{Kernel: p.Kernel, Modules: p.Modules, Deb: p.Deb}, p.Force, kernel.Reporter(stageSender(s)))
		if err != nil {
			return nil, err
		}
		return d.kernels.Show(ctx, k.Name)
	}))
	h(api.MethodKernelPull, withParams(func(ctx context.Context, p api.KernelPullParams, s *rpc.Stream) (any, error) {
		k, err := d.kernels.Pull(ctx, p.Name, p.Force, kernel.Reporter(stageSender(s)))
		if err != nil {
			return nil, err
		}
		return d.kernels.Show(ctx, k.Name)
	}))
	h(api.MethodKernelRemove, withParams(func(ctx context.Context, p api.KernelRef, _ *rpc.Stream) (any, error) {
		return struct{}{}, d.kernels.Remove(ctx, p.Name)
	}))

	h(api.MethodVMCreate, withParams(func(ctx context.Context, p api.VMCreateParams, _ *rpc.Stream) (any, error) {
		return d.vms.Create(ctx, p)
	}))
	h(api.MethodOpStatus, withParams(func(ctx context.Context, p api.OpRef, _ *rpc.Stream) (any, error) {
		return d.vms.OpStatus(p.ID)
	}))
	h(api.MethodOpWait, withParams(func(ctx context.Context, p api.OpRef, s *rpc.Stream) (any, error) {
		return d.vms.OpWait(ctx, p.ID, stageSender(s))
	}))
	h(api.MethodOpCancel, withParams(func(ctx context.Context, p api.OpRef, _ *rpc.Stream) (any, error) {
		return d.vms.OpCancel(p.ID)
	}))
	h(api.MethodVMStart, withParams(func(ctx context.Context, p api.VMRef, s *rpc.Stream) (any, error) {
		return d.vms.Start(ctx, p.Name, stageSender(s))
	}))
	h(api.MethodVMStop, withParams(func(ctx context.Context, p api.VMStopParams, _ *rpc.Stream) (any, error) {
		return d.vms.Stop(ctx, p)
	}))
	h(api.MethodVMRestart, withParams(func(ctx context.Context, p api.VMRef, s *rpc.Stream) (any, error) {
		return d.vms.Restart(ctx, p.Name, stageSender(s))
	}))
	h(api.MethodVMKill, withParams(func(ctx context.Context, p api.VMKillParams, _ *rpc.Stream) (any, error) {
		return d.vms.Kill(ctx, p)
	}))
	h(api.MethodVMDelete, withParams(func(ctx context.Context, p api.VMDeleteParams, _ *rpc.Stream) (any, error) {
		return struct{}{}, d.vms.Delete(ctx, p)
	}))
	h(api.MethodVMList, func(ctx context.Context, _ json.RawMessage, _ *rpc.Stream) (any, error) {
		return d.vms.List(ctx)
	})
	h(api.MethodVMShow, withParams(func(ctx context.Context, p api.VMRef, _ *rpc.Stream) (any, error) {
		return d.vms.Show(ctx, p.Name)
	}))
	h(api.MethodVMSet, withParams(func(ctx context.Context, p api.VMSetParams, _ *rpc.Stream) (any, error) {
		return d.vms.Set(ctx, p)
	}))
	h(api.MethodVMPrune, func(ctx context.Context, _ json.RawMessage, _ *rpc.Stream) (any, error) {
		return d.vms.Prune(ctx)
	})
	h(api.MethodVMWorkspacePrepare, withParams(func(ctx context.Context, p api.WorkspacePrepareParams, s *rpc.Stream) (any, error) {
		return d.vms.PrepareWorkspace(ctx, p, func(pr api.Progress) { _ = s.Send(api.EventProgress, pr) })
	}))
	h(api.MethodVMWorkspaceExport, withParams(func(ctx context.Context, p api.WorkspaceExportParams, _ *rpc.Stream) (any, error) {
		return d.vms.ExportWorkspace(ctx, p)
	}))
	h(api.MethodVMExec, withParams(func(ctx context.Context, p api.VMExecParams, s *rpc.Stream) (any, error) {
		return d.vms.Exec(ctx, p, func(o api.Output) { _ = s.Send(api.EventOutput, o) })
	}))
	h(api.MethodVMNetwork, withParams(func(ctx context.Context, p api.VMNetworkParams, _ *rpc.Stream) (any, error) {
		return d.vms.SetNetwork(ctx, p)
	}))
	h(api.MethodVMPorts, withParams(func(ctx context.Context, p api.VMPortsParams, _ *rpc.Stream) (any, error) {
		return d.vms.Ports(ctx, p.Names)
	}))
	h(api.MethodVMSSHCheck, withParams(func(ctx context.Context, p api.VMRef, _ *rpc.Stream) (any, error) {
		return nil, d.vms.SSHCheck(ctx, p.Name)
	}))
	h(api.MethodVMSSHInfo, withParams(func(ctx context.Context, p api.VMRef, _ *rpc.Stream) (any, error) {
		return d.vms.SSHInfo(ctx, p.Name)
	}))
	h(api.MethodVMLogs, withParams(func(ctx context.Context, p api.VMLogsParams, s *rpc.Stream) (any, error) {
		return d.vms.Logs(ctx, p, func(data string) error {
			return s.Send(api.EventLog, api.LogChunk{Data: data})
		})
	}))
}

// withParams decodes params strictly into P before calling fn.
func withParams[P any](fn func(context.Context, P, *rpc.Stream) (any, error)) rpc.HandlerFunc {
	return func(ctx context.Context, raw json.RawMessage, s *rpc.Stream) (any, error) {
		var p P
		if err := rpc.DecodeParams(raw, &p); err != nil {
			return nil, err
		}
		return fn(ctx, p, s)
	}
}

func stageSender(s *rpc.Stream) vm.Reporter {
	return func(st api.Stage) { _ = s.Send(api.EventStage, st) }
}
