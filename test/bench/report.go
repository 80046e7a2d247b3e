package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"time"

	"banger/internal/api"
)

// Row names, in the order they are first recorded.
const (
	measureRawPrepare  = "raw: disks (qemu-img + mkfs.ext4)"
	measureRawPort     = "raw: QEMU launch → port 22 accepts"
	measureRaw         = "raw: QEMU launch → SSH + true"
	measureCreate      = "banger: vm create → SSH (CLI)"
	measureStagePrefix = "banger stage: "
	measureOutside     = "banger: create outside the stages"
	measureConfirm     = "banger: vm ssh -- true"
)

// report is the result of a run.
type report struct {
	Runs        int    `json:"runs"`
	GuestDir    string `json:"guest_dir"`
	GuestKernel string `json:"guest_kernel"`
	HostKernel  string `json:"host_kernel"`
	HostCPUs    int    `json:"host_cpus"`
	TSCkHz      int    `json:"tsc_khz"`
	VCPU        int    `json:"vcpu"`
	MemoryMiB   int    `json:"memory_mib"`
	WorkDiskMiB int    `json:"work_disk_mib"`
	// RawAccel is what the raw QEMU runs use; BangerAccel what banger's VMs
	// ran with, and the daemon's reason for it.
	RawAccel          string `json:"raw_accel"`
	BangerAccel       string `json:"banger_accel"`
	BangerAccelReason string `json:"banger_accel_reason"`
	BangerDiskBackend string `json:"banger_disk_backend"`
	// DaemonStartedBeforeTiming: the daemon was started (and its
	// accelerator settled) once before the first timed create.
	DaemonStartedBeforeTiming bool       `json:"daemon_started_before_timing"`
	Measures                  []*measure `json:"measures"`
}

// measure is one row: its samples in seconds and their summary.
type measure struct {
	Name    string    `json:"name"`
	Samples []float64 `json:"samples_s"`
	Min     float64   `json:"min_s"`
	Median  float64   `json:"median_s"`
	Max     float64   `json:"max_s"`
}

func (b *bench) newReport() *report {
	return &report{
		Runs: b.o.n, GuestDir: b.guest.dir, GuestKernel: b.guest.release, HostKernel: hostKernel(),
		HostCPUs: runtime.NumCPU(), TSCkHz: b.tscKHz,
		VCPU: guestVCPU, MemoryMiB: guestMemoryMiB, WorkDiskMiB: workDiskMiB,
		RawAccel: "tcg", BangerAccelReason: b.bg.status.AccelReason, BangerDiskBackend: b.bg.status.DiskBackend,
		DaemonStartedBeforeTiming: true,
	}
}

// add records one sample of the named row.
func (r *report) add(name string, d time.Duration) {
	i := slices.IndexFunc(r.Measures, func(m *measure) bool { return m.Name == name })
	if i < 0 {
		r.Measures = append(r.Measures, &measure{Name: name})
		i = len(r.Measures) - 1
	}
	r.Measures[i].Samples = append(r.Measures[i].Samples, d.Seconds())
}

// addBanger records a create's CLI time, its stages as the daemon timed
// them, the rest (CLI, RPC, bookkeeping), and the confirming ssh.
func (r *report) addBanger(v api.VM, create, confirm time.Duration) error {
	if v.Accel != "" {
		if r.BangerAccel != "" && r.BangerAccel != v.Accel {
			return fmt.Errorf("vm %s ran with accel %s, an earlier one with %s", v.Name, v.Accel, r.BangerAccel)
		}
		r.BangerAccel = v.Accel
	}
	r.add(measureCreate, create)
	var inStages time.Duration
	for _, st := range v.Stages {
		if st.State != "done" {
			return fmt.Errorf("vm %s: stage %q is %s after a successful create", v.Name, st.Name, st.State)
		}
		d := time.Duration(st.DurationMS * float64(time.Millisecond))
		inStages += d
		r.add(measureStagePrefix+st.Name, d)
	}
	if len(v.Stages) == 0 {
		return fmt.Errorf("vm %s: `vm show --json` has no stages", v.Name)
	}
	r.add(measureOutside, create-inStages)
	r.add(measureConfirm, confirm)
	return nil
}

func (r *report) summarize() {
	for _, m := range r.Measures {
		s := slices.Clone(m.Samples)
		slices.Sort(s)
		m.Min, m.Max = s[0], s[len(s)-1]
		if n := len(s); n%2 == 1 {
			m.Median = s[n/2]
		} else {
			m.Median = (s[n/2-1] + s[n/2]) / 2
		}
	}
}

// print writes the table, or JSON.
func (r *report) print(w io.Writer, asJSON bool) error {
	r.summarize()
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Fprintf(w, "accelerator: raw %s, banger %s (%s); guest kernel %s; host kernel %s; host CPUs %d\n",
		r.RawAccel, r.BangerAccel, r.BangerAccelReason, r.GuestKernel, r.HostKernel, r.HostCPUs)
	fmt.Fprintf(w, "guest: %d vCPU, %d MiB, qcow2 overlay over %s/rootfs.ext4, %d MiB work disk; tsc_early_khz=%d; banger disk backend %s\n",
		r.VCPU, r.MemoryMiB, r.GuestDir, r.WorkDiskMiB, r.TSCkHz, r.BangerDiskBackend)
	fmt.Fprintf(w, "banger daemon: started once before timing; its start-up is not counted\n")
	fmt.Fprintf(w, "runs: %d of each, alternating (raw, banger), one guest at a time; seconds\n\n", r.Runs)
	width := len("measure")
	for _, m := range r.Measures {
		width = max(width, len([]rune(label(m.Name))))
	}
	pad := func(s string) string { return s + strings.Repeat(" ", width-len([]rune(s))) }
	fmt.Fprintf(w, "%s  %7s  %7s  %7s\n", pad("measure"), "min", "median", "max")
	for _, m := range r.Measures {
		fmt.Fprintf(w, "%s  %7.3f  %7.3f  %7.3f\n", pad(label(m.Name)), m.Min, m.Median, m.Max)
	}
	return nil
}

// label is a row's name in the table: the parts of a create are indented
// under it.
func label(name string) string {
	if stage, ok := strings.CutPrefix(name, measureStagePrefix); ok {
		return "  stage: " + stage
	}
	if name == measureOutside {
		return "  outside the stages"
	}
	return name
}
