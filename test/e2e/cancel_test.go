package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/vm"
)

// TestCreateCancelAtEachStage cancels a create while each stage holds the
// resources it made (BANGER_TEST_HOLD_STAGE), and checks the rollback leaves
// no row, directory, tap or VMM.
func TestCreateCancelAtEachStage(t *testing.T) {
	t.Parallel()
	for _, stage := range []string{"resolve image", "prepare disks", "network", "launch VMM"} {
		e := newEnv(t, envOpts{vars: []string{"BANGER_TEST_HOLD_STAGE=" + stage}})
		e.registerImage()
		c := e.client()
		var op api.Op
		if err := c.Call(context.Background(), api.MethodVMCreate, api.VMCreateParams{Name: "cancelme"}, &op); err != nil {
			t.Fatal(err)
		}
		held := make(chan struct{})
		var once bool
		done := make(chan error, 1)
		go func() {
			done <- c.CallStream(context.Background(), api.MethodOpWait, api.OpRef{ID: op.ID}, &op, func(ev string, data json.RawMessage) {
				var st api.Stage
				json.Unmarshal(data, &st)
				if st.Name == stage && st.Detail == vm.HeldDetail && !once {
					once = true
					close(held)
				}
			})
		}()
		select {
		case <-held:
		case <-time.After(60 * time.Second):
			t.Fatalf("stage %q never started", stage)
		}
		if stage == "launch VMM" {
			// The VMM really runs while the stage is held.
			if ps := processesMentioning(e.home); len(ps) == 0 {
				t.Fatalf("no VMM process while %q is held", stage)
			}
		}
		var cancelled api.Op
		if err := c.Call(context.Background(), api.MethodOpCancel, api.OpRef{ID: op.ID}, &cancelled); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if op.State != api.OpCanceled {
			t.Fatalf("cancel at %q: op ended %s (%s)", stage, op.State, op.Error)
		}
		if vms := e.list(); len(vms) != 0 {
			t.Fatalf("cancel at %q left VM rows: %+v", stage, vms)
		}
		if d := e.vmDirs(); len(d) != 0 {
			t.Fatalf("cancel at %q left VM directories: %v", stage, d)
		}
		if taps := e.vmTaps(); len(taps) != 0 {
			t.Fatalf("cancel at %q left taps: %v", stage, taps)
		}
		if ps := processesMentioning(e.home); len(ps) != 0 {
			t.Fatalf("cancel at %q left processes: %v", stage, ps)
		}
	}
}

// TestCreateCtrlC interrupts `banger vm create` while it waits for the guest,
// as a user pressing Ctrl-C would: the CLI cancels, the daemon rolls back.
func TestCreateCtrlC(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.registerImage()
	cmd := e.cmd("vm", "create", "--name", "interrupted")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	buf := make([]byte, 4096)
	for !strings.Contains(seen.String(), "wait for guest ...") {
		n, err := stderr.Read(buf)
		if err != nil {
			t.Fatalf("CLI ended before waiting for the guest: %v\n%s", err, seen.String())
		}
		seen.Write(buf[:n])
	}
	if ps := processesMentioning(e.home); !strings.Contains(strings.Join(ps, "\n"), "qemu-system") {
		t.Fatalf("no VMM running while the CLI waits for the guest: %v", ps)
	}
	// `ip netns exec` runs banger as its child; signal banger itself.
	pid := cliPID(t, cmd.Process.Pid)
	syscall.Kill(pid, syscall.SIGINT)
	rest := make([]byte, 0)
	for {
		n, err := stderr.Read(buf)
		rest = append(rest, buf[:n]...)
		if err != nil {
			break
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !(errorAs(err, &ee) && ee.ExitCode() == 130) {
		t.Fatalf("CLI after Ctrl-C: %v (want exit 130)\n%s%s", err, seen.String(), rest)
	}
	assertContains(t, "CLI output", string(rest), "nothing was left behind")
	if vms := e.list(); len(vms) != 0 {
		t.Fatalf("Ctrl-C left VM rows: %+v", vms)
	}
	if ps := processesMentioning(e.home); len(ps) != 0 {
		t.Fatalf("Ctrl-C left processes: %v", ps)
	}
	if taps := e.vmTaps(); len(taps) != 0 {
		t.Fatalf("Ctrl-C left taps: %v", taps)
	}
}
