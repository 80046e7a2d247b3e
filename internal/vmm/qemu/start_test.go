package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/vmm"
	"banger/internal/vmm/proc"
)

// testGuest returns a kernel and initrd to boot: $BANGER_TEST_GUEST (the e2e
// fixture directory) or the fixture cache, else the test is skipped.
func testGuest(t *testing.T) (kernel, initrd string) {
	t.Helper()
	dirs := []string{os.Getenv("BANGER_TEST_GUEST")}
	cached, _ := filepath.Glob("/var/cache/banger-test/guest-*")
	for _, d := range append(dirs, cached...) {
		if d == "" {
			continue
		}
		k, i := filepath.Join(d, "vmlinuz"), filepath.Join(d, "initrd.img")
		if _, err := os.Stat(k); err == nil {
			if _, err := os.Stat(i); err != nil {
				i = ""
			}
			return k, i
		}
	}
	t.Skip("no guest kernel: set BANGER_TEST_GUEST or build test/fixture")
	return "", ""
}

// processesMentioning lists pids whose argv contains s.
func processesMentioning(s string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// A QEMU that cannot start (no such kernel) makes Start fail with QEMU's own
// message, and leaves nothing running.
func TestStartFailureReportsQEMUError(t *testing.T) {
	if err := Probe("qemu-system-x86_64"); err != nil {
		t.Skip(err)
	}
	run := filepath.Join(t.TempDir(), "bangertest-run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := vmm.Spec{Name: "bangertest-nokernel", RunDir: run, Kernel: filepath.Join(run, "no-such-vmlinuz"),
		Cmdline: "console=ttyS0", VCPU: 1, MemoryMiB: 128, ConsoleLog: filepath.Join(run, "console.log")}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := New(Options{Accel: "tcg"}).Start(ctx, spec)
	if err == nil {
		_ = m.Signal(syscall.SIGKILL)
		t.Fatal("Start with a missing kernel succeeded")
	}
	for _, want := range []string{"qemu did not start", "qemu said:", "no-such-vmlinuz"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start error %q does not contain %q", err, want)
		}
	}
	if pids := processesMentioning(run); len(pids) > 0 {
		t.Errorf("processes left running after a failed Start: %v", pids)
	}
	if _, err := os.Stat(filepath.Join(run, "qmp.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("qmp.sock left behind: %v", err)
	}
}

// Start boots a real kernel under TCG from the argv Args builds: QEMU accepts
// every option (drives included), the console reaches the log, the agent
// socket exists, and Quit stops it.
func TestStartBootsKernelUnderTCG(t *testing.T) {
	if err := Probe("qemu-system-x86_64"); err != nil {
		t.Skip(err)
	}
	kernel, initrd := testGuest(t)
	img, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img not installed")
	}
	run := filepath.Join(t.TempDir(), "bangertest-run")
	// A comma in the disk, console and agent paths exercises QEMU's option
	// escaping. (Not in RunDir: a comma there breaks the process identity
	// check, see the report on proc markers.)
	files := filepath.Join(run, "disks,console")
	if err := os.MkdirAll(files, 0o700); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(files, "root.qcow2")
	if out, err := exec.Command(img, "create", "-q", "-f", "qcow2", root, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	work := filepath.Join(files, "work.img")
	if err := os.WriteFile(work, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(work, 16<<20); err != nil {
		t.Fatal(err)
	}
	spec := vmm.Spec{
		Name: "bangertest-boot", RunDir: run, Kernel: kernel, Initrd: initrd,
		Cmdline: "console=ttyS0 panic=-1", VCPU: 1, MemoryMiB: 256,
		Drives: []vmm.Drive{
			{ID: "root", Path: root, Format: vmm.FormatQcow2, Root: true},
			{ID: "work", Path: work, ReadOnly: true},
		},
		ConsoleLog:   filepath.Join(files, "console.log"),
		GuestChannel: filepath.Join(files, "agent.sock"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := New(Options{Accel: "tcg"}).Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		select {
		case <-m.Done():
		default:
			_ = m.Signal(syscall.SIGKILL) // checks pid + start time first
			select {
			case <-m.Done():
			case <-time.After(10 * time.Second):
				t.Errorf("qemu pid %d survived SIGKILL", m.Handle().PID)
			}
		}
		m.Close()
	})

	h := m.Handle()
	if h.Driver != "qemu" || h.Accel != "tcg" || h.ControlSocket != filepath.Join(run, "qmp.sock") || h.PID <= 0 {
		t.Errorf("Handle() = %+v", h)
	}
	if err := proc.Verify(h.PID, h.StartTime, h.ControlSocket); err != nil {
		t.Errorf("handle does not identify the process: %v", err)
	}
	argv, err := proc.Cmdline(h.PID)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.Index(argv, "-append"); i < 0 || !strings.Contains(argv[i+1], "tsc=reliable") {
		t.Errorf("running qemu argv lacks the TCG cmdline additions: %q", argv)
	}
	if st, err := os.Stat(spec.GuestChannel); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("agent socket %s: %v", spec.GuestChannel, err)
	}

	// The kernel's first console line reaches the log (bounded poll).
	deadline := time.Now().Add(45 * time.Second)
	for {
		b, _ := os.ReadFile(spec.ConsoleLog)
		if strings.Contains(string(b), "Linux version") {
			if !strings.Contains(string(b), "tsc_early_khz=") {
				t.Logf("console log does not echo tsc_early_khz (HostTSCkHz unavailable?)")
			}
			break
		}
		select {
		case <-m.Done():
			log, _ := os.ReadFile(filepath.Join(run, "vmm.log"))
			t.Fatalf("qemu exited during boot; console %q; vmm.log %q", b, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no \"Linux version\" on the console after 45s; console %q", b)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := m.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	select {
	case <-m.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("qemu still running 15s after Quit")
	}
	if pids := processesMentioning(run); len(pids) > 0 {
		t.Errorf("processes left after Quit: %v", pids)
	}
}
