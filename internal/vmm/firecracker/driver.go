package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/vmm"
	"banger/internal/vmm/proc"
)

const (
	driverName = "firecracker"

	// apiSocketName is the API socket's name in Spec.RunDir (or jailRunDir).
	apiSocketName = "firecracker.sock"
	// logFileName is Firecracker's own log (PUT /logger) in Spec.RunDir
	// (or jailRunDir). The guest console goes to Spec.ConsoleLog.
	logFileName = "vmm.log"
	// defaultConsoleName receives stdout in RunDir when Spec.ConsoleLog is empty.
	defaultConsoleName = "console.log"

	// guestCID is the guest's vsock context id (0-2 are reserved).
	guestCID = 3

	defaultReadyTimeout = 10 * time.Second
	killTimeout         = 5 * time.Second
	outputTailBytes     = 2048
)

// Options configures the driver.
type Options struct {
	// Binary is the firecracker executable; default "firecracker" from PATH.
	Binary string
	// Jailer, when set, runs Firecracker under the jailer.
	Jailer *JailerOptions
	// Log receives the driver's diagnostics; nil discards them.
	Log *slog.Logger
}

// Driver is the Firecracker vmm.Driver.
type Driver struct {
	opts Options
	log  *slog.Logger
	// readyTimeout bounds the wait for the API socket after launch.
	readyTimeout time.Duration
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a Firecracker driver.
func New(o Options) *Driver {
	if o.Binary == "" {
		o.Binary = "firecracker"
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{opts: o, log: log.With("driver", driverName), readyTimeout: defaultReadyTimeout}
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return driverName }

// Accel implements vmm.Driver. Firecracker runs on KVM only: there is no
// emulation fallback, so the reason says whether KVM and a supported
// Firecracker are actually usable here.
func (d *Driver) Accel() (string, string) {
	err := Probe(d.opts.Binary)
	if err == nil && d.opts.Jailer != nil {
		if _, lerr := exec.LookPath(jailerBinary(d.opts.Jailer)); lerr != nil {
			err = fmt.Errorf("jailer binary %q not found: %w", jailerBinary(d.opts.Jailer), lerr)
		}
	}
	if err != nil {
		return "kvm", "firecracker runs only on KVM, and is not usable here: " + strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	return "kvm", "firecracker runs only on KVM; /dev/kvm and the firecracker binary are usable"
}

func jailerBinary(o *JailerOptions) string {
	if o.Binary == "" {
		return "jailer"
	}
	return o.Binary
}

// launch is everything decided before the process starts.
type launch struct {
	id        string
	argv      []string
	marker    string   // proc identity marker, found in the VMM's argv
	apiSocket string   // host path the client dials
	stdout    string   // host file receiving stdout+stderr: the guest console
	apiSpec   vmm.Spec // spec with paths as Firecracker sees them
	jail      *jailLayout
	steps     []stageStep
}

// Start implements vmm.Driver: it launches Firecracker (directly, or through
// the jailer), waits for its API socket, configures the machine and boots
// it. On any error after launch the process is killed and reaped and its
// sockets (and jail) are removed.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	l, err := d.plan(spec)
	if err != nil {
		return nil, err
	}
	// Checked before prepare: the failure path below removes sockets and
	// the jail, which must not happen to a machine that is running.
	if answering(ctx, l.apiSocket) {
		return nil, fmt.Errorf("firecracker: a VMM already answers on %s", l.apiSocket)
	}
	if err := d.prepare(l, spec); err != nil {
		d.cleanupFiles(l, spec)
		return nil, err
	}
	stdoutOffset := fileSize(l.stdout)

	p, err := proc.Start(l.argv, l.stdout, l.marker)
	if err != nil {
		d.cleanupFiles(l, spec)
		return nil, err
	}
	d.log.Info("firecracker launched", "vm", spec.Name, "pid", p.PID, "socket", l.apiSocket, "jailed", l.jail != nil)

	client := NewClient(l.apiSocket)
	fail := func(err error) (vmm.Machine, error) {
		client.Close()
		if kerr := p.KillAndWait(killTimeout); kerr != nil {
			d.log.Error("kill firecracker after failed start", "vm", spec.Name, "pid", p.PID, "err", kerr)
		}
		tail := d.outputTail(l, stdoutOffset)
		d.cleanupFiles(l, spec)
		if tail != "" {
			err = fmt.Errorf("%w\n%s", err, tail)
		}
		return nil, fmt.Errorf("start firecracker for %s: %w", spec.Name, err)
	}
	if err := waitReady(ctx, client, p, d.readyTimeout); err != nil {
		return fail(err)
	}
	if err := configure(ctx, client, l.apiSpec); err != nil {
		return fail(err)
	}
	h := vmm.Handle{
		Driver:        driverName,
		PID:           p.PID,
		StartTime:     p.StartTime,
		ControlSocket: l.apiSocket,
		Accel:         "kvm",
	}
	return &machine{h: h, p: p, c: client}, nil
}

// plan computes argv, paths and (with the jailer) the staging plan.
func (d *Driver) plan(spec vmm.Spec) (*launch, error) {
	id := instanceID(spec.Name)
	if id == "" {
		return nil, fmt.Errorf("firecracker: VM name %q gives an empty instance id", spec.Name)
	}
	l := &launch{id: id, stdout: spec.ConsoleLog}
	if l.stdout == "" {
		// Not vmm.log: Firecracker's logger writes that from offset 0.
		l.stdout = filepath.Join(spec.RunDir, defaultConsoleName)
	}
	if d.opts.Jailer == nil {
		l.apiSocket = filepath.Join(spec.RunDir, apiSocketName)
		if len(l.apiSocket) >= unixPathMax {
			return nil, fmt.Errorf("firecracker: API socket path %s is longer than a Unix socket allows (%d bytes)", l.apiSocket, unixPathMax-1)
		}
		l.argv = []string{d.opts.Binary, "--api-sock", l.apiSocket, "--id", id}
		l.marker = l.apiSocket
		l.apiSpec = spec
		return l, nil
	}

	execFile, err := exec.LookPath(d.opts.Binary)
	if err == nil {
		execFile, err = filepath.Abs(execFile)
	}
	if err != nil {
		return nil, fmt.Errorf("firecracker: locate binary %q for the jailer: %w", d.opts.Binary, err)
	}
	jl, err := newJailLayout(*d.opts.Jailer, execFile, id)
	if err != nil {
		return nil, err
	}
	l.jail = &jl
	l.apiSocket = jl.APISocket()
	l.argv = jailerArgv(*d.opts.Jailer, jl)
	// The jailer execs Firecracker with "--id=<id>": the id is the one
	// argument both the jailer's and Firecracker's argv contain.
	l.marker = id
	l.steps, l.apiSpec = stageFiles(jl, spec)
	return l, nil
}

// markerFor is the proc identity marker of an adopted machine, derived from
// the persisted control socket the same way plan derived it.
func (d *Driver) markerFor(socket string) string {
	if d.opts.Jailer != nil {
		if id := jailIDFromSocket(socket); id != "" {
			return id
		}
	}
	return socket
}

// prepare clears leftovers of an earlier run and creates what Firecracker
// expects to exist. Firecracker refuses to bind an API or vsock socket path
// that already exists, and opens its log file without creating it.
func (d *Driver) prepare(l *launch, spec vmm.Spec) error {
	if err := removeStale(l.apiSocket); err != nil {
		return err
	}
	if spec.GuestChannel != "" {
		if err := removeStale(spec.GuestChannel); err != nil {
			return err
		}
	}
	if l.jail == nil {
		return freshLog(filepath.Join(spec.RunDir, logFileName))
	}

	if err := os.RemoveAll(l.jail.Dir); err != nil {
		return fmt.Errorf("jailer: remove stale jail: %w", err)
	}
	if err := stage(*l.jail, l.steps, d.opts.Jailer.UID, d.opts.Jailer.GID); err != nil {
		return err
	}
	if spec.GuestChannel != "" {
		// The daemon keeps dialing Spec.GuestChannel; Firecracker binds the
		// socket inside the jail. connect(2) follows the symlink.
		target := l.jail.HostPath(l.apiSpec.GuestChannel)
		if err := os.Symlink(target, spec.GuestChannel); err != nil {
			return fmt.Errorf("jailer: link guest channel: %w", err)
		}
	}
	return nil
}

// freshLog keeps the previous run's log as <path>.old and creates an empty
// log. Firecracker writes its log from offset 0 without truncating (and
// older versions do not create the file), so an old log must not be reused.
func freshLog(path string) error {
	if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
		if err := os.Rename(path, path+".old"); err != nil {
			return fmt.Errorf("firecracker: keep previous log: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("firecracker: create log file: %w", err)
	}
	return f.Close()
}

// cleanupFiles removes what a failed start leaves behind. The process must
// be gone.
func (d *Driver) cleanupFiles(l *launch, spec vmm.Spec) {
	_ = removeStale(l.apiSocket)
	if spec.GuestChannel != "" {
		_ = removeStale(spec.GuestChannel)
	}
	if l.jail != nil {
		if err := os.RemoveAll(l.jail.Dir); err != nil {
			d.log.Warn("remove jail", "dir", l.jail.Dir, "err", err)
		}
	}
}

// removeStale removes a leftover socket (or symlink to one). It refuses to
// remove anything else, so a mistyped path cannot delete a user's file.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&(fs.ModeSocket|fs.ModeSymlink) == 0 {
		return fmt.Errorf("firecracker: %s exists and is not a socket; refusing to remove it", path)
	}
	return os.Remove(path)
}

// answering reports whether something serves Firecracker's API on socket.
func answering(ctx context.Context, socket string) bool {
	if _, err := os.Lstat(socket); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	c := NewClient(socket)
	defer c.Close()
	_, err := c.DescribeInstance(ctx)
	return err == nil
}

// waitReady polls GET / until the API answers, the process exits, ctx ends
// or timeout passes.
func waitReady(ctx context.Context, c *Client, p *proc.Process, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := 5 * time.Millisecond
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, time.Second)
		_, err := c.DescribeInstance(actx)
		acancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-p.Done():
			return fmt.Errorf("firecracker (pid %d) exited before its API socket answered", p.PID)
		case <-ctx.Done():
			return fmt.Errorf("firecracker API socket %s did not answer: %w (last attempt: %v)", c.Socket(), ctx.Err(), last)
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// configure sends the pre-boot configuration and boots the guest. spec's
// paths must be as Firecracker sees them (jail-relative under the jailer).
// The order follows Firecracker's guidance: logger first, InstanceStart last.
func configure(ctx context.Context, c *Client, spec vmm.Spec) error {
	step := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("configure %s: %w", what, err)
		}
		return nil
	}
	if err := step("logger", c.PutLogger(ctx, Logger{
		LogPath:   filepath.Join(spec.RunDir, logFileName),
		Level:     "Info",
		ShowLevel: true,
	})); err != nil {
		return err
	}
	if err := step("machine", c.PutMachineConfig(ctx, MachineConfig{
		VCPUCount:  spec.VCPU,
		MemSizeMiB: spec.MemoryMiB,
	})); err != nil {
		return err
	}
	if err := step("boot source", c.PutBootSource(ctx, BootSource{
		KernelImagePath: spec.Kernel,
		BootArgs:        spec.Cmdline,
		InitrdPath:      spec.Initrd,
	})); err != nil {
		return err
	}
	for _, dr := range spec.Drives {
		if err := step("drive "+dr.ID, c.PutDrive(ctx, Drive{
			DriveID:      dr.ID,
			PathOnHost:   dr.Path,
			IsRootDevice: dr.Root,
			IsReadOnly:   dr.ReadOnly,
		})); err != nil {
			return err
		}
	}
	for _, n := range spec.NICs {
		if err := step("network interface "+n.ID, c.PutNetworkInterface(ctx, NetworkInterface{
			IfaceID:     n.ID,
			HostDevName: n.Tap,
			GuestMAC:    n.MAC,
		})); err != nil {
			return err
		}
	}
	if spec.GuestChannel != "" {
		if err := step("vsock", c.PutVsock(ctx, Vsock{GuestCID: guestCID, UDSPath: spec.GuestChannel})); err != nil {
			return err
		}
	}
	return step("instance start", c.Action(ctx, ActionInstanceStart))
}

// validateSpec rejects, before anything is launched, what Firecracker
// cannot run.
func validateSpec(spec vmm.Spec) error {
	var problems []error
	for _, dr := range spec.Drives {
		if dr.Format == vmm.FormatQcow2 {
			problems = append(problems, fmt.Errorf("drive %s (%s) is qcow2: firecracker opens raw images only; use the reflink, dm or copy root backend", dr.ID, dr.Path))
		} else if dr.Format != "" && dr.Format != vmm.FormatRaw {
			problems = append(problems, fmt.Errorf("drive %s: unknown format %q", dr.ID, dr.Format))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("firecracker: %w", errors.Join(problems...))
	}
	switch {
	case spec.Name == "":
		problems = append(problems, errors.New("spec has no name"))
	case spec.RunDir == "":
		problems = append(problems, errors.New("spec has no run directory"))
	case spec.Kernel == "":
		problems = append(problems, errors.New("spec has no kernel"))
	}
	if spec.VCPU < 1 || spec.VCPU > 32 {
		problems = append(problems, fmt.Errorf("%d vCPUs: firecracker supports 1 to 32", spec.VCPU))
	}
	if spec.MemoryMiB < 1 {
		problems = append(problems, fmt.Errorf("memory %d MiB: must be positive", spec.MemoryMiB))
	}
	roots := 0
	for _, dr := range spec.Drives {
		if !validDeviceID(dr.ID) {
			problems = append(problems, fmt.Errorf("drive id %q: use letters, digits and '_'", dr.ID))
		}
		if dr.Root {
			roots++
		}
	}
	if roots > 1 {
		problems = append(problems, fmt.Errorf("%d root drives: firecracker allows one", roots))
	}
	for _, n := range spec.NICs {
		if !validDeviceID(n.ID) {
			problems = append(problems, fmt.Errorf("network interface id %q: use letters, digits and '_'", n.ID))
		}
		if n.Tap == "" {
			problems = append(problems, fmt.Errorf("network interface %s has no tap device", n.ID))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("firecracker: %w", errors.Join(problems...))
	}
	return nil
}

// validDeviceID accepts drive and interface ids that are safe in API URL
// paths and jail file names.
func validDeviceID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// instanceID turns a VM name into a Firecracker/jailer instance id: letters,
// digits and '-', at most 64 characters. Other characters become '-'.
func instanceID(name string) string {
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

func validInstanceID(id string) bool {
	return id != "" && instanceID(id) == id
}

// outputTail is the process output written since launch plus the end of
// Firecracker's own log, for error messages.
func (d *Driver) outputTail(l *launch, stdoutOffset int64) string {
	var parts []string
	if s := readTail(l.stdout, stdoutOffset); s != "" {
		parts = append(parts, "--- firecracker output ("+l.stdout+") ---\n"+s)
	}
	logPath := filepath.Join(l.apiSpec.RunDir, logFileName)
	if l.jail != nil {
		logPath = l.jail.HostPath(logPath)
	}
	if s := readTail(logPath, 0); s != "" {
		parts = append(parts, "--- firecracker log ("+logPath+") ---\n"+s)
	}
	return strings.Join(parts, "\n")
}

// readTail returns at most outputTailBytes from the end of path, not
// before offset.
func readTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size <= offset {
		return ""
	}
	start := max(offset, size-outputTailBytes)
	b := make([]byte, size-start)
	if _, err := f.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
