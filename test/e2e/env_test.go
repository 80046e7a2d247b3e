package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/rpc"
)

const nsPrefix = "bgt-"

// env is one isolated banger installation: its own home (XDG dirs), config
// and network namespace. The daemon starts on the first CLI call.
type env struct {
	t    *testing.T
	ns   string
	home string
	vars []string
	wrap []string
}

type envOpts struct {
	config string   // extra config.toml content
	vars   []string // extra environment for the CLI (and so the daemon)
	wrap   []string // a command the CLI runs under inside the namespace (e.g. setpriv to another uid)
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	e := &env{t: t, ns: nsPrefix + hex.EncodeToString(b), wrap: o.wrap}
	e.home = filepath.Join(testRoot, e.ns)
	for _, d := range []string{"config/banger", "state", "cache", "run"} {
		if err := os.MkdirAll(filepath.Join(e.home, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	e.vars = append([]string{
		"XDG_CONFIG_HOME=" + e.home + "/config", "XDG_STATE_HOME=" + e.home + "/state",
		"XDG_CACHE_HOME=" + e.home + "/cache", "XDG_RUNTIME_DIR=" + e.home + "/run",
	}, o.vars...)
	cfg := "[vm]\nvcpu = 1\nmemory = \"512MiB\"\nwork_size = \"1GiB\"\n" + o.config
	if err := os.WriteFile(filepath.Join(e.home, "config/banger/config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "add", e.ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	exec.Command("ip", "-n", e.ns, "link", "set", "lo", "up").Run()
	t.Cleanup(e.cleanup)
	return e
}

// cleanup deletes every VM, stops the daemon, checks that nothing of the
// scenario is left (processes, taps) and removes the namespace.
func (e *env) cleanup() {
	t := e.t
	if t.Failed() {
		// The daemon's log says why; the scenario's home is removed below.
		if b, err := os.ReadFile(filepath.Join(e.stateDir(), "bangerd.log")); err == nil {
			t.Logf("bangerd.log of %s (last 40 lines):\n%s", e.ns, lastLines(string(b), 40))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if c, err := rpc.Dial(ctx, e.socket()); err == nil {
		var vms []api.VM
		c.Call(ctx, api.MethodVMList, nil, &vms)
		for _, v := range vms {
			if v.State == api.StateCreating {
				continue // stopping the daemon cancels the create, which rolls it back
			}
			if err := c.Call(ctx, api.MethodVMDelete, api.VMDeleteParams{Name: v.Name, Force: true}, nil); err != nil {
				t.Errorf("cleanup: delete %s: %v", v.Name, err)
			}
		}
		var st api.DaemonStatus
		c.Call(ctx, api.MethodDaemonStatus, nil, &st)
		c.Call(ctx, api.MethodDaemonStop, nil, nil)
		c.Close()
		if st.PID != 0 && !waitGone(st.PID, 30*time.Second) {
			t.Errorf("cleanup: daemon %d did not exit", st.PID)
		}
	}
	if ps := processesMentioning(e.home); len(ps) > 0 {
		t.Errorf("processes of this scenario still running after delete + daemon stop: %v", ps)
		for _, p := range ps {
			pid, _ := strconv.Atoi(strings.Fields(p)[0])
			syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 10*time.Second)
		}
	}
	if taps := e.vmTaps(); len(taps) > 0 {
		t.Errorf("taps left in %s after every VM was deleted: %v", e.ns, taps)
	}
	if out, err := exec.Command("ip", "netns", "del", e.ns).CombinedOutput(); err != nil {
		t.Errorf("ip netns del %s: %v %s", e.ns, err, out)
	}
}

func (e *env) socket() string   { return filepath.Join(e.home, "run/banger/bangerd.sock") }
func (e *env) stateDir() string { return filepath.Join(e.home, "state/banger") }

// vmTaps returns the VM taps in the scenario's namespace: every bgtap* link
// but the pool taps, which are the daemon's spare capacity.
func (e *env) vmTaps() []string {
	var taps []string
	for _, l := range e.links(hostnet.DefaultTapPrefix) {
		if !(hostnet.Config{}).IsPoolTap(l) {
			taps = append(taps, l)
		}
	}
	return taps
}

// links returns the names of links in the scenario's namespace starting with prefix.
func (e *env) links(prefix string) []string {
	out, _ := exec.Command("ip", "-n", e.ns, "-o", "link", "show").Output()
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			n := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
			if strings.HasPrefix(n, prefix) {
				names = append(names, n)
			}
		}
	}
	return names
}

// cmd builds a CLI command running inside the scenario's namespace.
func (e *env) cmd(args ...string) *exec.Cmd {
	argv := append(append([]string{"netns", "exec", e.ns}, e.wrap...), filepath.Join(binDir, "banger"))
	c := exec.Command("ip", append(argv, args...)...)
	c.Env = append(os.Environ(), e.vars...)
	return c
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs the CLI and returns its output and exit code.
func (e *env) run(args ...string) result {
	e.t.Helper()
	c := e.cmd(args...)
	var out, errb strings.Builder
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("banger %v: %v", args, err)
	}
	return r
}

// must runs the CLI and fails the test unless it exits 0.
func (e *env) must(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// ssh runs a command in the guest through `banger vm ssh` and returns stdout.
func (e *env) ssh(vm string, argv ...string) string {
	e.t.Helper()
	return e.must(append([]string{"vm", "ssh", vm, "--"}, argv...)...)
}

// fixtureKernel is the name of the fixture's kernel in each scenario's kernel store.
const fixtureKernel = "fixture"

// registerImage registers the fixture as the default image, booting the
// fixture's kernel through banger's own initramfs.
func (e *env) registerImage() {
	e.t.Helper()
	e.importKernel()
	e.must("image", "register", "--name", "default", "--rootfs", filepath.Join(guestDir, "rootfs.ext4"),
		"--kernel-name", fixtureKernel)
}

// importKernel imports the fixture's kernel and modules as fixtureKernel.
func (e *env) importKernel() {
	e.t.Helper()
	e.must("kernel", "import", fixtureKernel, "--kernel", filepath.Join(guestDir, "vmlinuz"),
		"--modules", filepath.Join(guestDir, "modules"))
}

func (e *env) show(name string) api.VM {
	e.t.Helper()
	var v api.VM
	if err := json.Unmarshal([]byte(e.must("vm", "show", "--json", name)), &v); err != nil {
		e.t.Fatal(err)
	}
	return v
}

func (e *env) list() []api.VM {
	e.t.Helper()
	var vms []api.VM
	if err := json.Unmarshal([]byte(e.must("vm", "list", "--json")), &vms); err != nil {
		e.t.Fatal(err)
	}
	return vms
}

func (e *env) daemonPID() int {
	e.t.Helper()
	var st api.DaemonStatus
	if err := json.Unmarshal([]byte(e.must("daemon", "status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	return st.PID
}

// client dials the daemon's RPC socket directly.
func (e *env) client() *rpc.Client {
	e.t.Helper()
	c, err := rpc.Dial(context.Background(), e.socket())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// vmDirs lists the per-VM directories in the state dir.
func (e *env) vmDirs() []string {
	ents, _ := os.ReadDir(filepath.Join(e.stateDir(), "vms"))
	var out []string
	for _, d := range ents {
		out = append(out, d.Name())
	}
	return out
}

// waitGone waits for a process (not necessarily our child) to disappear.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if exited(pid) {
			return true
		}
		time.Sleep(20 * time.Millisecond) // polling a process that is not our child
	}
	return false
}

// exited reports whether pid is gone or a zombie whose every thread has
// exited. A killed multi-threaded process (bangerd) shows its leader as a
// zombie while other threads still exit, and its files (the RPC listener)
// close only when the last one does.
func exited(pid int) bool {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	if !strings.Contains(string(st), ") Z ") {
		return false
	}
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	return err != nil || len(tasks) <= 1
}

func alive(pid int) bool { return !exited(pid) }

func assertContains(t *testing.T, what, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("%s: want it to contain %q, got:\n%s", what, sub, s)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
