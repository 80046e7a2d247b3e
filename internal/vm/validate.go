package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/netfilter"
	"banger/internal/rpc"
	"banger/internal/store"
)

// createRequest is a validated VMCreateParams with defaults applied.
type createRequest struct {
	name       string
	image      store.Image
	vcpu       int
	memoryMiB  int
	diskSize   int64
	workSize   int64
	noStart    bool
	keepFailed bool
	nat        bool
	publish    []netfilter.PortMapping
}

func invalid(format string, args ...any) error {
	return rpc.Errorf(rpc.CodeInvalidArgument, format, args...)
}

// validateCreate checks every input before anything is created.
func (s *Service) validateCreate(ctx context.Context, p api.VMCreateParams) (createRequest, error) {
	r := createRequest{name: p.Name, vcpu: s.Config.VM.VCPU, noStart: p.NoStart, keepFailed: p.KeepFailed}
	if r.name != "" {
		if err := ValidateName(r.name); err != nil {
			return r, invalid("%v", err)
		}
	}
	if p.VCPU != nil {
		r.vcpu = *p.VCPU
	}
	if err := checkVCPU(r.vcpu); err != nil {
		return r, err
	}
	var err error
	if r.memoryMiB, err = parseMemory(p.Memory, s.Config.VM.Memory); err != nil {
		return r, err
	}
	r.nat = p.NAT
	for _, spec := range p.Publish {
		pm, err := netfilter.ParsePublish(spec)
		if err != nil {
			return r, invalid("-p %q: %v", spec, err)
		}
		r.publish = append(r.publish, pm)
	}
	imageName := p.Image
	if imageName == "" {
		imageName = api.DefaultImage
	}
	r.image, err = s.Store.GetImage(ctx, imageName)
	if errors.Is(err, store.ErrNotFound) {
		if p.Image == "" {
			return r, rpc.Errorf(rpc.CodeNotFound, "no --image given and no image named %q; get it with `banger image pull %s --name %s` (vm create and vm run do that on first use), or register one with `banger image register --name %s --rootfs FILE --kernel FILE [--initrd FILE]`",
				api.DefaultImage, api.DefaultImageSource, api.DefaultImage, api.DefaultImage)
		}
		return r, rpc.Errorf(rpc.CodeNotFound, "no image named %q (see `banger image list`)", p.Image)
	}
	if err != nil {
		return r, err
	}
	if p.DiskSize != "" {
		if r.diskSize, err = disk.ParseSize(p.DiskSize); err != nil {
			return r, invalid("--disk-size %q: %v", p.DiskSize, err)
		}
	}
	if st, err := os.Stat(r.image.RootFS); err == nil && r.diskSize < st.Size() {
		if r.diskSize != 0 {
			return r, invalid("--disk-size %s is smaller than image %s (%d bytes); disks can only grow", p.DiskSize, r.image.Name, st.Size())
		}
		r.diskSize = st.Size()
	}
	ws := p.WorkSize
	if ws == "" {
		ws = s.Config.VM.WorkSize
	}
	if r.workSize, err = disk.ParseSize(ws); err != nil {
		return r, invalid("work disk size %q: %v", ws, err)
	}
	if r.workSize < 16<<20 {
		return r, invalid("work disk size %q: must be at least 16MiB", ws)
	}
	return r, nil
}

func checkVCPU(n int) error {
	if n < 1 {
		return invalid("--vcpu %d: must be at least 1", n)
	}
	if host := runtime.NumCPU(); n > host {
		return invalid("--vcpu %d: this host has %d CPUs; ask for at most %d", n, host, host)
	}
	return nil
}

// parseMemory parses a memory size (default def) into MiB and checks it
// against the host's memory.
func parseMemory(v, def string) (int, error) {
	if v == "" {
		v = def
	}
	b, err := disk.ParseSize(v)
	if err != nil {
		return 0, invalid("--memory %q: %v", v, err)
	}
	mib := int(b >> 20)
	if mib < 128 {
		return 0, invalid("--memory %q: at least 128MiB is needed to boot", v)
	}
	if host := hostMemMiB(); host > 0 && mib > host {
		return 0, invalid("--memory %q is more than this host's %d MiB of RAM", v, host)
	}
	return mib, nil
}

func hostMemMiB() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return kb / 1024
		}
	}
	return 0
}

// reserveVM atomically picks a name (if none was given) and an address and
// inserts the row in state "creating": the durable intent that reconcile
// rolls back if the daemon dies mid-create.
func (s *Service) reserveVM(ctx context.Context, r createRequest) (store.VM, error) {
	s.reserve.Lock()
	defer s.reserve.Unlock()
	vms, err := s.Store.ListVMs(ctx)
	if err != nil {
		return store.VM{}, err
	}
	taken := map[string]bool{}
	var used []netip.Addr
	for _, v := range vms {
		taken[v.Name] = true
		if a, err := netip.ParseAddr(v.IP); err == nil {
			used = append(used, a)
		}
	}
	name := r.name
	if name == "" {
		for name = GenerateName(); taken[name]; name = GenerateName() {
		}
	} else if taken[name] {
		return store.VM{}, rpc.Errorf(rpc.CodeConflict, "a VM named %q already exists; choose another --name or delete it first", name)
	}
	for _, pm := range r.publish {
		if err := checkPublish(vms, pm, ""); err != nil {
			return store.VM{}, err
		}
	}
	ip, err := allocate(s.Net.CIDR, used)
	if err != nil {
		return store.VM{}, rpc.Errorf(rpc.CodeFailedPrecondition, "%v", err)
	}
	id := newID()
	v := store.VM{
		ID: id, Name: name, Image: r.image.Name, State: api.StateCreating, VCPU: r.vcpu, MemoryMiB: r.memoryMiB,
		DiskSize: r.diskSize, WorkSize: r.workSize, IP: ip.String(), MAC: macFor(id), Tap: s.Net.TapName(id),
		Driver: s.Driver.Name(), Root: disk.Root{Backend: s.Disk.Name()},
		Dir: s.Paths.VMDir(id), CreatedAt: nowUTC(), NAT: r.nat,
	}
	for _, pm := range r.publish {
		v.Publish = append(v.Publish, pm.String())
	}
	v.WorkPath = v.Dir + "/work.ext4"
	if err := s.Store.InsertVM(ctx, v); err != nil {
		return store.VM{}, fmt.Errorf("record vm %s: %w", name, err)
	}
	return v, nil
}
