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
	measureCreate      = "banger: create → agent ready"
	measureStagePrefix = "banger stage: "
	measureOutside     = "banger: create outside the stages"
	measureFirstAgent  = "first command via agent (vm exec)"
	measureFirstSSH    = "first command via SSH (vm ssh)"
	measureTotalAgent  = "create → first command via agent"
	measureTotalSSH    = "create → first command via SSH"
	measureAgainAgent  = "banger: vm exec -- true (2nd command)"
	measureConfirm     = "banger: vm ssh -- true (2nd command)"
	measureWorkspace   = "workspace: banger vm workspace prepare"
	measureArchive     = "workspace: git archive | ssh tar -x"
)

// firstCommandMethod is how the first-command rows are measured.
const firstCommandMethod = "two fresh VMs per run, one at a time: one gets `vm exec NAME true` (agent) right after its " +
	"`vm create` returns, the other `vm ssh NAME -- true` (SSH); which is created first alternates by run; " +
	"each then gets a 2nd command the same way"

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
	DaemonStartedBeforeTiming bool `json:"daemon_started_before_timing"`
	// FirstCommandMethod says how the first-command rows were measured.
	FirstCommandMethod string `json:"first_command_method"`
	// Workspace describes the repository the copy-in rows copy.
	Workspace *workspaceInfo `json:"workspace,omitempty"`
	Measures  []*measure     `json:"measures"`
}

// workspaceInfo is the generated repository and how it was copied.
type workspaceInfo struct {
	VM          string `json:"vm"`
	Files       int    `json:"files"`
	Bytes       int64  `json:"bytes"` // tracked content: the bytes of MB/s (MB = 10^6 bytes)
	TextFiles   int    `json:"text_files"`
	TextBytes   int64  `json:"text_bytes"`
	BinaryFiles int    `json:"binary_files"`
	BinaryBytes int64  `json:"binary_bytes"`
	// ObjectBytes is the size of git's (compressed) objects for the
	// commit: about the history pack prepare sends besides the files.
	ObjectBytes int64  `json:"object_bytes"`
	Method      string `json:"method"`
}

// measure is one row: its samples in seconds and their summary. A copy
// row also has the bytes copied and the throughput of each sample.
type measure struct {
	Name       string      `json:"name"`
	Samples    []float64   `json:"samples_s"`
	Min        float64     `json:"min_s"`
	Median     float64     `json:"median_s"`
	Max        float64     `json:"max_s"`
	Bytes      int64       `json:"bytes,omitempty"`
	Throughput *throughput `json:"throughput_mb_per_s,omitempty"`
}

// throughput is a copy row's MB/s (10^6 bytes per second) per sample.
type throughput struct {
	Samples []float64 `json:"samples"`
	Min     float64   `json:"min"`
	Median  float64   `json:"median"`
	Max     float64   `json:"max"`
}

func (b *bench) newReport() *report {
	return &report{
		Runs: b.o.n, GuestDir: b.guest.dir, GuestKernel: b.guest.release, HostKernel: hostKernel(),
		HostCPUs: runtime.NumCPU(), TSCkHz: b.tscKHz,
		VCPU: guestVCPU, MemoryMiB: guestMemoryMiB, WorkDiskMiB: workDiskMiB,
		RawAccel: "tcg", BangerAccelReason: b.bg.status.AccelReason, BangerDiskBackend: b.bg.status.DiskBackend,
		DaemonStartedBeforeTiming: true, FirstCommandMethod: firstCommandMethod,
	}
}

// add records one sample of the named row.
func (r *report) add(name string, d time.Duration) {
	m := r.row(name)
	m.Samples = append(m.Samples, d.Seconds())
}

// addCopy records one copy of bytes that took d.
func (r *report) addCopy(name string, bytes int64, d time.Duration) {
	m := r.row(name)
	m.Bytes = bytes
	if m.Throughput == nil {
		m.Throughput = &throughput{}
	}
	m.Samples = append(m.Samples, d.Seconds())
	m.Throughput.Samples = append(m.Throughput.Samples, float64(bytes)/1e6/d.Seconds())
}

// row returns the named row, appending it if it is new.
func (r *report) row(name string) *measure {
	i := slices.IndexFunc(r.Measures, func(m *measure) bool { return m.Name == name })
	if i < 0 {
		r.Measures = append(r.Measures, &measure{Name: name})
		i = len(r.Measures) - 1
	}
	return r.Measures[i]
}

// addBanger records one run's two VMs: each create's CLI time, its stages
// as the daemon timed them and the rest (CLI, RPC, bookkeeping); the first
// command of each VM (a through the agent, s through SSH), create plus
// that first command, and each VM's second command.
func (r *report) addBanger(a, s vmSample) error {
	for _, x := range []vmSample{a, s} {
		if err := r.addCreate(x.v, x.create); err != nil {
			return err
		}
	}
	r.add(measureFirstAgent, a.first)
	r.add(measureFirstSSH, s.first)
	r.add(measureTotalAgent, a.create+a.first)
	r.add(measureTotalSSH, s.create+s.first)
	r.add(measureAgainAgent, a.second)
	r.add(measureConfirm, s.second)
	return nil
}

// addCreate records a create's CLI time, its stages and the rest.
func (r *report) addCreate(v api.VM, create time.Duration) error {
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
	return nil
}

func (r *report) summarize() {
	for _, m := range r.Measures {
		m.Min, m.Median, m.Max = stats(m.Samples)
		if t := m.Throughput; t != nil {
			t.Min, t.Median, t.Max = stats(t.Samples)
		}
	}
}

// stats returns the minimum, median and maximum of samples (not empty).
func stats(samples []float64) (lo, median, hi float64) {
	s := slices.Clone(samples)
	slices.Sort(s)
	n := len(s)
	median = s[n/2]
	if n%2 == 0 {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return s[0], median, s[n-1]
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
	fmt.Fprintf(w, "runs: %d of each, alternating (raw, banger), one guest at a time; seconds\n", r.Runs)
	fmt.Fprintf(w, "first commands: %s; the create rows have 2 samples per run\n", r.FirstCommandMethod)
	if ws := r.Workspace; ws != nil {
		fmt.Fprintf(w, "workspace copy-in: generated git repo, 1 commit, %d tracked files, %.1f MB (%d text files %.1f MB, %d random binary files %.1f MB), git objects %.1f MB\n",
			ws.Files, float64(ws.Bytes)/1e6, ws.TextFiles, float64(ws.TextBytes)/1e6, ws.BinaryFiles, float64(ws.BinaryBytes)/1e6, float64(ws.ObjectBytes)/1e6)
		fmt.Fprintf(w, "  method: %s\n", ws.Method)
	}
	fmt.Fprintln(w)
	type line struct {
		label          string
		lo, median, hi float64
		prec           int
	}
	var lines []line
	for _, m := range r.Measures {
		lines = append(lines, line{label(m.Name), m.Min, m.Median, m.Max, 3})
		if t := m.Throughput; t != nil {
			lines = append(lines, line{"  MB/s (tracked bytes / time)", t.Min, t.Median, t.Max, 2})
		}
	}
	width := len("measure")
	for _, l := range lines {
		width = max(width, len([]rune(l.label)))
	}
	pad := func(s string) string { return s + strings.Repeat(" ", width-len([]rune(s))) }
	fmt.Fprintf(w, "%s  %7s  %7s  %7s\n", pad("measure"), "min", "median", "max")
	for _, l := range lines {
		fmt.Fprintf(w, "%s  %7.*f  %7.*f  %7.*f\n", pad(l.label), l.prec, l.lo, l.prec, l.median, l.prec, l.hi)
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
