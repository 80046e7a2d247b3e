package vm

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/rpc"
)

// Set changes a stopped VM's vCPUs, memory or work disk size (grow only).
func (s *Service) Set(ctx context.Context, p api.VMSetParams) (api.VM, error) {
	if p.VCPU < 0 {
		return api.VM{}, invalid("--vcpu %d: must be at least 1", p.VCPU)
	}
	if p.VCPU > 0 {
		if err := checkVCPU(p.VCPU); err != nil {
			return api.VM{}, err
		}
	}
	mem := 0
	if p.Memory != "" {
		var err error
		if mem, err = parseMemory(p.Memory, ""); err != nil {
			return api.VM{}, err
		}
	}
	var work int64
	if p.WorkSize != "" {
		var err error
		if work, err = disk.ParseSize(p.WorkSize); err != nil {
			return api.VM{}, invalid("--work-size %q: %v", p.WorkSize, err)
		}
	}
	v, unlock, err := s.getLocked(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if v.State != api.StateStopped {
		return api.VM{}, rpc.Errorf(rpc.CodeFailedPrecondition, "vm %s is %s; stop it before changing its resources", v.Name, v.State)
	}
	if work != 0 && work < v.WorkSize {
		return api.VM{}, invalid("--work-size %s is smaller than the current %d bytes; disks can only grow", p.WorkSize, v.WorkSize)
	}
	if work > v.WorkSize {
		if err := disk.GrowWorkDisk(ctx, v.WorkPath, work); err != nil {
			return api.VM{}, fmt.Errorf("grow work disk of %s: %w", v.Name, err)
		}
		v.WorkSize = work
	}
	if p.VCPU > 0 {
		v.VCPU = p.VCPU
	}
	if mem > 0 {
		v.MemoryMiB = mem
	}
	if err := s.save(&v); err != nil {
		return api.VM{}, err
	}
	return s.View(v), nil
}

// Logs returns the console log (the last tail bytes when tail > 0). With
// follow, new output is sent until ctx ends.
func (s *Service) Logs(ctx context.Context, p api.VMLogsParams, send func(string) error) (api.LogChunk, error) {
	v, err := s.get(ctx, p.Name)
	if err != nil {
		return api.LogChunk{}, err
	}
	f, err := os.Open(consoleLog(v))
	if os.IsNotExist(err) {
		if !p.Follow {
			return api.LogChunk{}, nil
		}
	} else if err != nil {
		return api.LogChunk{}, err
	} else {
		defer f.Close()
	}
	read := func() (string, error) {
		if f == nil {
			if f, err = os.Open(consoleLog(v)); err != nil {
				return "", nil
			}
		}
		b, err := io.ReadAll(f)
		return string(b), err
	}
	if f != nil && p.Tail > 0 {
		if st, err := f.Stat(); err == nil && st.Size() > p.Tail {
			f.Seek(-p.Tail, io.SeekEnd)
		}
	}
	first, err := read()
	if err != nil || !p.Follow {
		return api.LogChunk{Data: first}, err
	}
	if err := send(first); err != nil {
		return api.LogChunk{}, err
	}
	for {
		select {
		case <-ctx.Done():
			return api.LogChunk{}, nil
		case <-time.After(200 * time.Millisecond): // poll the file for appended output
		}
		more, err := read()
		if err != nil {
			return api.LogChunk{}, err
		}
		if more != "" {
			if err := send(more); err != nil {
				return api.LogChunk{}, nil
			}
		}
	}
}
