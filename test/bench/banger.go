package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"banger/internal/api"
)

// banger drives the banger CLI of one isolated installation: binaries built
// for the run and a home (XDG directories) under the run's directory. Every
// CLI call, and so the daemon the first call starts, runs in the namespace.
type banger struct {
	bin    string // directory holding banger and bangerd
	home   string
	ns     *netns
	env    []string
	status api.DaemonStatus // as read after the daemon started
}

// buildBanger builds banger, bangerd and the (static) guest agent and
// banger-init into <dir>/bin.
func buildBanger(ctx context.Context, root, dir string) (*banger, error) {
	bin := filepath.Join(dir, "bin")
	logf("building banger and bangerd into %s", bin)
	for _, pkgs := range [][]string{{"./cmd/banger", "./cmd/bangerd"}, {"./cmd/banger-agent", "./cmd/banger-init"}} {
		c := command(ctx, append([]string{goBinary(), "build", "-o", bin + "/"}, pkgs...)...)
		c.Dir = root
		c.Env = append(os.Environ(), "CGO_ENABLED=0") // the agent runs in guests: static
		if out, err := c.CombinedOutput(); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("go build: %w", ctx.Err())
			}
			return nil, fmt.Errorf("go build: %w\n%s", err, out)
		}
	}
	return &banger{bin: bin, home: filepath.Join(dir, "home")}, nil
}

// bangerConfig gives banger the raw runs' guest shape and accelerator, and a
// bridge name carrying the run's marker.
func bangerConfig() string {
	return fmt.Sprintf(`# written by test/bench: the raw runs' guest shape and accelerator
[qemu]
accel = "tcg"

[vm]
vcpu = %d
memory = "%dMiB"
work_size = "%dMiB"

[network]
bridge = "bgbench-bbr0"
`, guestVCPU, guestMemoryMiB, workDiskMiB)
}

// setupHome makes the isolated home and the environment pointing at it.
func (bg *banger) setupHome() error {
	for _, d := range []string{"config/banger", "state", "cache", "run", "tmp"} {
		if err := os.MkdirAll(filepath.Join(bg.home, d), 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(bg.home, "config/banger/config.toml"), []byte(bangerConfig()), 0o600); err != nil {
		return err
	}
	bg.env = []string{
		"HOME=" + bg.home,
		"XDG_CONFIG_HOME=" + bg.home + "/config", "XDG_STATE_HOME=" + bg.home + "/state",
		"XDG_CACHE_HOME=" + bg.home + "/cache", "XDG_RUNTIME_DIR=" + bg.home + "/run",
		// The daemon's temporary files (e.g. a workspace's shallow pack
		// repository) stay under the run's directory too.
		"TMPDIR=" + bg.home + "/tmp",
		"BANGER_SYSTEM=", "BANGER_TEST_HOLD_STAGE=",
	}
	return nil
}

// cli builds a banger CLI command in the namespace. Canceling ctx
// interrupts it like Ctrl-C, so `vm create` cancels the operation and rolls
// back what it made before it exits.
func (bg *banger) cli(ctx context.Context, args ...string) *exec.Cmd {
	c := command(ctx, bg.ns.exec(append([]string{filepath.Join(bg.bin, "banger")}, args...)...)...)
	c.Env = append(os.Environ(), bg.env...)
	c.Cancel = func() error { return c.Process.Signal(os.Interrupt) }
	c.WaitDelay = 2 * time.Minute
	return c
}

// run runs the CLI and returns its stdout; the error carries its stderr.
func (bg *banger) run(ctx context.Context, args ...string) (string, error) {
	c := bg.cli(ctx, args...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return out.String(), fmt.Errorf("banger %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// prepare registers the fixture as the default image and starts the daemon
// (the first CLI call does), so the timed creates never include its start.
// `daemon status` also settles the accelerator choice before timing.
func (bg *banger) prepare(ctx context.Context, g guestFiles) error {
	if _, err := bg.run(ctx, "kernel", "import", "fixture", "--kernel", g.kernel, "--modules", g.modules); err != nil {
		return err
	}
	if _, err := bg.run(ctx, "image", "register", "--name", "default",
		"--rootfs", g.rootfs, "--kernel-name", "fixture"); err != nil {
		return err
	}
	st, err := bg.daemonStatus(ctx)
	if err != nil {
		return err
	}
	bg.status = st
	logf("banger daemon pid %d started before timing (accel %s: %s; disk backend %s)", st.PID, st.Accel, st.AccelReason, st.DiskBackend)
	return nil
}

// daemonStatus asks a running daemon; it never starts one.
func (bg *banger) daemonStatus(ctx context.Context) (api.DaemonStatus, error) {
	var st api.DaemonStatus
	out, err := bg.run(ctx, "daemon", "status", "--json")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// firstCmd is how a fresh VM gets its first command.
type firstCmd int

const (
	viaAgent firstCmd = iota // `banger vm exec NAME -- true`: the guest agent (virtio-serial)
	viaSSH                   // `banger vm ssh NAME -- true`: the system ssh, after the daemon waited for sshd
)

func (k firstCmd) String() string { return [...]string{"agent", "ssh"}[k] }

// argv is the CLI command running `true` in the VM this way. `vm exec`
// takes no "--" after NAME: it stops parsing flags at NAME and would pass
// "--" to the guest as the command.
func (k firstCmd) argv(name string) []string {
	if k == viaAgent {
		return []string{"vm", "exec", name, "true"}
	}
	return []string{"vm", "ssh", name, "--", "true"}
}

// vmSample is one timed create and the two commands after it.
type vmSample struct {
	v             api.VM        // as `vm show --json` reported it after the commands
	create        time.Duration // `vm create` CLI start → exit
	first, second time.Duration // the first command right after create, then the same again
}

// bangerIteration makes two fresh VMs, one at a time: one gets its first
// command through the agent, the other through SSH, so neither first
// command is warmed by the other (a guest keeps booting after create
// returns; sshd in particular). Which VM comes first alternates by run.
func (b *bench) bangerIteration(ctx context.Context, i int, rep *report) error {
	order := []firstCmd{viaAgent, viaSSH}
	if i%2 == 0 {
		order = []firstCmd{viaSSH, viaAgent}
	}
	var got [2]vmSample
	for _, k := range order {
		s, err := b.createAndCommand(ctx, fmt.Sprintf("bench%d%s", i, k.String()[:1]), k)
		if err != nil {
			return err
		}
		got[k] = s
	}
	a, s := got[viaAgent], got[viaSSH]
	if err := rep.addBanger(a, s); err != nil {
		return err
	}
	logf("banger %d/%d (%s VM first): create → agent ready %.2f s + vm exec %.2f s = %.2f s; create %.2f s + vm ssh %.2f s = %.2f s; 2nd commands: exec %.2f s, ssh %.2f s",
		i, b.o.n, order[0], a.create.Seconds(), a.first.Seconds(), (a.create + a.first).Seconds(),
		s.create.Seconds(), s.first.Seconds(), (s.create + s.first).Seconds(), a.second.Seconds(), s.second.Seconds())
	return nil
}

// createAndCommand times `vm create`, then right away the first `true`
// the way k says, then a second one the same way; reads the VM's stage
// timings and deletes it.
func (b *bench) createAndCommand(ctx context.Context, name string, k firstCmd) (vmSample, error) {
	bg := b.bg
	var s vmSample
	timed := func(args ...string) (time.Duration, error) {
		t := time.Now()
		_, err := bg.run(ctx, args...)
		return time.Since(t), err
	}
	var err error
	if s.create, err = timed("vm", "create", "--name", name); err != nil {
		return s, err
	}
	if s.first, err = timed(k.argv(name)...); err != nil {
		return s, err
	}
	if s.second, err = timed(k.argv(name)...); err != nil {
		return s, err
	}
	if s.v, err = bg.show(ctx, name); err != nil {
		return s, err
	}
	// Without an agent `vm exec` quietly goes through SSH: that would not
	// be the agent's first command.
	if !s.v.Agent {
		return s, fmt.Errorf("vm %s has no guest agent (`vm show` agent=false): the fixture's initramfs was not extended; vm exec would use SSH", name)
	}
	if _, err := bg.run(ctx, "vm", "delete", "--force", name); err != nil {
		return s, err
	}
	return s, nil
}

func (bg *banger) show(ctx context.Context, name string) (api.VM, error) {
	var v api.VM
	out, err := bg.run(ctx, "vm", "show", "--json", name)
	if err != nil {
		return v, err
	}
	return v, json.Unmarshal([]byte(out), &v)
}

// deleteAllVMs force-deletes every VM of the installation. A VM still
// creating is left to stopDaemon: stopping the daemon cancels the create,
// which rolls it back.
func (bg *banger) deleteAllVMs(ctx context.Context) error {
	if _, err := bg.daemonStatus(ctx); err != nil {
		return nil // no daemon answers; a VMM left behind shows in the leak check
	}
	out, err := bg.run(ctx, "vm", "list", "--json")
	if err != nil {
		return err
	}
	var vms []api.VM
	if err := json.Unmarshal([]byte(out), &vms); err != nil {
		return err
	}
	var errs []error
	for _, v := range vms {
		if v.State == api.StateCreating {
			continue
		}
		if _, err := bg.run(ctx, "vm", "delete", "--force", v.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stopDaemon runs `banger daemon stop` and waits for the daemon to exit. If
// it does not, it is killed by pid after checking its command line is this
// run's bangerd.
func (bg *banger) stopDaemon(ctx context.Context) error {
	st, err := bg.daemonStatus(ctx)
	if err != nil {
		return nil // not running
	}
	if _, err := bg.run(ctx, "daemon", "stop"); err != nil {
		return err
	}
	if waitGone(ctx, st.PID, 90*time.Second) {
		return nil
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(st.PID) + "/cmdline")
	if bytes.Contains(cmdline, []byte(bg.bin)) {
		_ = syscall.Kill(st.PID, syscall.SIGKILL)
		waitGone(ctx, st.PID, 10*time.Second)
	}
	return fmt.Errorf("daemon pid %d did not exit after `banger daemon stop` (killed)", st.PID)
}
