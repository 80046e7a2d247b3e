// Package qemu is the QEMU driver: -M microvm with virtio-mmio block and net
// devices, the serial console appended to a per-VM log, and QMP over a Unix
// socket for control. It uses KVM when a real boot probe shows KVM runs a
// stock kernel (accel.go), TCG otherwise; under TCG the kernel command line
// gets tsc_early_khz and tsc=reliable so the guest does not hang calibrating its clock.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"banger/internal/vmm"
	"banger/internal/vmm/proc"
)

// Options configure the driver.
type Options struct {
	Binary string // qemu-system-x86_64
	// Accel is "auto", "kvm" or "tcg".
	Accel string
	// CacheDir keeps the KVM probe result.
	CacheDir string
	// ProbeKernel is a kernel the KVM probe boots (auto mode).
	ProbeKernel func() string
	Log         *slog.Logger
}

// Driver implements vmm.Driver for QEMU.
type Driver struct {
	o      Options
	probed probeRecord // last KVM probe verdict (guarded by probeMu)
}

// New returns a QEMU driver.
func New(o Options) *Driver {
	if o.Binary == "" {
		o.Binary = "qemu-system-x86_64"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &Driver{o: o}
}

func (d *Driver) Name() string { return "qemu" }

// Accel reports the accelerator the next Start uses and why.
func (d *Driver) Accel() (string, string) {
	c := d.chooseAccel()
	return c.accel, c.reason
}

func (d *Driver) qmpPath(spec vmm.Spec) string { return filepath.Join(spec.RunDir, "qmp.sock") }

// Args builds the QEMU argv for spec with the given accelerator.
func (d *Driver) Args(spec vmm.Spec, accel string) ([]string, error) {
	if spec.VCPU < 1 || spec.MemoryMiB < 64 {
		return nil, fmt.Errorf("qemu: invalid vcpu %d / memory %d MiB", spec.VCPU, spec.MemoryMiB)
	}
	cmdline := spec.Cmdline
	if accel == "tcg" && !strings.Contains(cmdline, "tsc_early_khz=") {
		if khz, err := HostTSCkHz(); err == nil {
			cmdline += " tsc_early_khz=" + strconv.Itoa(khz)
		}
	}
	if accel == "tcg" && !strings.Contains(cmdline, "tsc=") {
		// Under TCG the guest's clocksource watchdog sees the emulated TSC
		// drift and falls back to jiffies a few seconds in, which stalls
		// timers; the TSC is in fact monotonic here.
		cmdline += " tsc=reliable"
	}
	a := []string{d.o.Binary,
		"-name", "banger-" + spec.Name,
		"-M", "microvm",
		"-accel", accel,
		"-m", strconv.Itoa(spec.MemoryMiB),
		"-smp", strconv.Itoa(spec.VCPU),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", spec.Kernel,
		"-append", cmdline,
	}
	if accel == "kvm" {
		a = append(a, "-cpu", "max")
	}
	if spec.Initrd != "" {
		a = append(a, "-initrd", spec.Initrd)
	}
	for _, dr := range spec.Drives {
		f := string(dr.Format)
		if f == "" {
			f = "raw"
		}
		opt := "id=" + dr.ID + ",file=" + escapeOpt(dr.Path) + ",format=" + f + ",if=none,cache=writeback,discard=unmap"
		if dr.ReadOnly {
			opt += ",readonly=on"
		}
		a = append(a, "-drive", opt, "-device", "virtio-blk-device,drive="+dr.ID)
	}
	fd := 3 // inherited descriptors follow stdin, stdout, stderr (see nicFiles)
	for _, n := range spec.NICs {
		netdev := "tap,id=" + n.ID + ",ifname=" + n.Tap + ",script=no,downscript=no"
		if n.File != nil {
			netdev = "tap,id=" + n.ID + ",fd=" + strconv.Itoa(fd)
			fd++
		}
		a = append(a, "-netdev", netdev, "-device", "virtio-net-device,netdev="+n.ID+",mac="+n.MAC)
	}
	if spec.GuestChannel != "" {
		a = append(a, "-device", "virtio-serial-device",
			"-chardev", "socket,id=agent,path="+escapeOpt(spec.GuestChannel)+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name=banger.agent")
	}
	a = append(a,
		"-chardev", "file,id=console,path="+escapeOpt(spec.ConsoleLog)+",append=on",
		"-serial", "chardev:console",
		"-qmp", "unix:"+escapeOpt(d.qmpPath(spec))+",server=on,wait=off",
	)
	return a, nil
}

// nicFiles are the NICs' tap descriptors, in the order Args numbers them.
func nicFiles(spec vmm.Spec) []*os.File {
	var fs []*os.File
	for _, n := range spec.NICs {
		if n.File != nil {
			fs = append(fs, n.File)
		}
	}
	return fs
}

// escapeOpt doubles commas, QEMU's escape inside option values.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Start launches QEMU and connects to its QMP socket.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	accel := d.chooseAccel().accel
	argv, err := d.Args(spec, accel)
	if err != nil {
		return nil, err
	}
	sock := d.qmpPath(spec)
	_ = os.Remove(sock)
	logPath := filepath.Join(spec.RunDir, "vmm.log")
	d.o.Log.Debug("launch qemu", "vm", spec.Name, "argv", argv)
	p, err := proc.Start(argv, logPath, escapeOpt(sock), nicFiles(spec)...) // the marker as it appears in argv
	if err != nil {
		return nil, err
	}
	m := &machine{p: p, h: vmm.Handle{Driver: "qemu", PID: p.PID, StartTime: p.StartTime, ControlSocket: sock, Accel: accel}}
	q, err := waitQMP(ctx, sock, p)
	if err != nil {
		_ = p.KillAndWait(5 * time.Second)
		_ = os.Remove(sock)
		return nil, fmt.Errorf("qemu did not start: %w%s", err, logTail(logPath))
	}
	m.q = q
	return m, nil
}

func waitQMP(ctx context.Context, sock string, p *proc.Process) (*qmp, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		select {
		case <-p.Done():
			return nil, errors.New("qemu exited during start")
		default:
		}
		q, err := dialQMP(ctx, sock)
		if err == nil {
			return q, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp socket %s: %w (last error: %v)", sock, ctx.Err(), err)
		case <-p.Done():
			return nil, errors.New("qemu exited during start")
		case <-time.After(20 * time.Millisecond): // poll for the socket QEMU creates
		}
	}
}

func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\nqemu said: " + strings.TrimSpace(string(b))
}

// Adopt re-attaches to a QEMU started by an earlier daemon.
func (d *Driver) Adopt(ctx context.Context, h vmm.Handle) (vmm.Machine, error) {
	p, err := proc.Adopt(h.PID, h.StartTime, escapeOpt(h.ControlSocket))
	if err != nil {
		return nil, vmm.ErrNotRunning
	}
	m := &machine{p: p, h: h}
	if q, err := dialQMP(ctx, h.ControlSocket); err == nil {
		m.q = q
	} else {
		d.o.Log.Warn("adopted qemu without QMP", "pid", h.PID, "err", err)
	}
	return m, nil
}

type machine struct {
	p *proc.Process
	h vmm.Handle
	q *qmp
}

func (m *machine) Handle() vmm.Handle    { return m.h }
func (m *machine) Done() <-chan struct{} { return m.p.Done() }

func (m *machine) Quit(ctx context.Context) error {
	if m.q == nil {
		return m.Signal(syscall.SIGTERM)
	}
	_, err := m.q.execute(ctx, "quit", nil)
	if err != nil {
		select {
		case <-m.p.Done():
			return nil // it quit before answering
		default:
		}
	}
	return err
}

func (m *machine) Signal(sig syscall.Signal) error { return m.p.Signal(sig) }

func (m *machine) CtrlAltDel(ctx context.Context) error {
	if m.q == nil {
		return errors.New("qemu: no QMP connection")
	}
	_, err := m.q.execute(ctx, "system_powerdown", nil)
	return err
}

func (m *machine) Close() error {
	if m.q != nil {
		return m.q.close()
	}
	return nil
}

// HostTSCkHz reads the host's TSC frequency in kHz from /proc/cpuinfo.
func HostTSCkHz() (int, error) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, err
			}
			return int(mhz*1000 + 0.5), nil
		}
	}
	return 0, errors.New("no 'cpu MHz' in /proc/cpuinfo")
}

// Probe checks that the QEMU binary exists.
func Probe(binary string) error {
	if _, err := exec.LookPath(binary); err != nil {
		return fmt.Errorf("%s not found: install the qemu-system-x86 package", binary)
	}
	return nil
}
