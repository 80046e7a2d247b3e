package proc

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sleeper returns the path of a symlink to sleep(1) whose name carries a
// bangertest marker, so the process's argv[0] (and comm) identify it the way
// a VMM's argv carries its control socket path.
func sleeper(t *testing.T, name string) string {
	t.Helper()
	bin, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	link := filepath.Join(t.TempDir(), name)
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	return link
}

// startSleeper starts a long sleep through Start and kills it at cleanup,
// even when the test fails.
func startSleeper(t *testing.T) (*Process, string) {
	t.Helper()
	marker := sleeper(t, "bangertest-vmm-"+strconv.Itoa(os.Getpid()))
	p, err := Start([]string{marker, "1000"}, filepath.Join(t.TempDir(), "bangertest.log"), marker)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killStarted(t, p) })
	waitExec(t, p.PID, marker)
	return p, marker
}

// waitExec waits (bounded) until pid's argv[0] is argv0. The kernel resumes
// the parent before the new program's argv (and comm) are in place, so
// right after exec.Cmd.Start /proc/<pid>/cmdline may still read empty.
func waitExec(t *testing.T, pid int, argv0 string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if argv, err := Cmdline(pid); err == nil && argv[0] == argv0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not show argv[0] %q within 10s", pid, argv0)
		}
		time.Sleep(time.Millisecond)
	}
}

// killStarted kills a process Start started (Start's goroutine reaps it).
func killStarted(t *testing.T, p *Process) {
	if err := p.KillAndWait(10 * time.Second); err != nil {
		t.Errorf("cleanup: %v", err)
		p.child.Kill() // our unreaped child: the pid is still its own
		<-p.Done()
	}
}

// statFields returns /proc/<pid>/stat fields from field 3 (state) on.
func statFields(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// uptimeTicks is the time since boot in clock ticks (USER_HZ, 100 on Linux).
func uptimeTicks(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	secs, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(secs*100) + 1
}

func TestStartRunsDetachedAndIdentifiable(t *testing.T) {
	before, err := StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	p, marker := startSleeper(t)
	if p.PID <= 0 || p.Marker != marker {
		t.Fatalf("process %+v", p)
	}
	st, err := StartTime(p.PID)
	if err != nil || st != p.StartTime {
		t.Fatalf("StartTime(%d) = %d, %v; Start recorded %d", p.PID, st, err, p.StartTime)
	}
	if p.StartTime < before || p.StartTime > uptimeTicks(t) {
		t.Fatalf("start time %d is not between the test's own (%d) and now (%d)", p.StartTime, before, uptimeTicks(t))
	}
	argv, err := Cmdline(p.PID)
	if err != nil || len(argv) != 2 || argv[0] != marker || argv[1] != "1000" {
		t.Fatalf("Cmdline = %q, %v", argv, err)
	}
	// Its own session and process group: daemon signals do not reach it.
	f := statFields(t, p.PID)
	if f[2] != strconv.Itoa(p.PID) || f[3] != strconv.Itoa(p.PID) {
		t.Fatalf("pgrp %s, session %s; want both %d (setsid)", f[2], f[3], p.PID)
	}
	if err := Verify(p.PID, p.StartTime, marker); err != nil {
		t.Fatalf("Verify of a live process: %v", err)
	}
	select {
	case <-p.Done():
		t.Fatal("Done closed while the process runs")
	default:
	}
}

// A pid is only ours when the start time and the argv marker match too: a
// recycled pid (same number, another process) is refused.
func TestVerifyRefusesOtherProcesses(t *testing.T) {
	p, marker := startSleeper(t)
	for _, tc := range []struct {
		name      string
		pid       int
		startTime uint64
		marker    string
	}{
		{"start time differs (pid reused)", p.PID, p.StartTime + 1, marker},
		{"start time earlier", p.PID, p.StartTime - 1, marker},
		{"another pid with this start time", 1, p.StartTime, ""}, // pid 1 started long before (start times have a 10ms tick: not the test process)
		{"argv lacks the marker", p.PID, p.StartTime, "/run/bangertest/other.sock"},
		{"pid 0", 0, p.StartTime, ""},
		{"negative pid", -1, p.StartTime, ""},
		{"no such pid", 1 << 30, p.StartTime, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Verify(tc.pid, tc.startTime, tc.marker); !errors.Is(err, ErrGone) {
				t.Fatalf("Verify = %v, want ErrGone", err)
			}
			if _, err := Adopt(tc.pid, tc.startTime, tc.marker); !errors.Is(err, ErrGone) {
				t.Fatalf("Adopt = %v, want ErrGone", err)
			}
		})
	}
	// An empty marker skips only the argv check.
	if err := Verify(p.PID, p.StartTime, ""); err != nil {
		t.Fatalf("Verify without marker: %v", err)
	}
}

// A Process whose recorded identity does not match the pid's current one is
// never signalled.
func TestSignalRefusesRecycledPID(t *testing.T) {
	p, marker := startSleeper(t)
	stale := &Process{PID: p.PID, StartTime: p.StartTime + 1, Marker: marker, done: make(chan struct{})}
	if err := stale.Signal(syscall.SIGKILL); !errors.Is(err, ErrGone) {
		t.Fatalf("Signal with a stale start time = %v, want ErrGone", err)
	}
	if err := Verify(p.PID, p.StartTime, marker); err != nil {
		t.Fatalf("the real process was hit: %v", err)
	}
	if f := statFields(t, p.PID); f[0] == "Z" {
		t.Fatal("the real process is a zombie")
	}
}

func TestSignalAndExit(t *testing.T) {
	p, _ := startSleeper(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a canceled context on a live process = %v", err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := p.Wait(wctx); err != nil {
		t.Fatalf("process did not exit after SIGTERM: %v", err)
	}
	// Start's goroutine reaped it: the pid no longer names it.
	if err := Verify(p.PID, p.StartTime, p.Marker); !errors.Is(err, ErrGone) {
		t.Fatalf("Verify after exit = %v, want ErrGone", err)
	}
	if err := p.Signal(syscall.SIGKILL); !errors.Is(err, ErrGone) {
		t.Fatalf("Signal after exit = %v, want ErrGone", err)
	}
	if err := p.KillAndWait(time.Second); err != nil {
		t.Fatalf("KillAndWait after exit = %v, want nil", err)
	}
	if _, err := Adopt(p.PID, p.StartTime, p.Marker); !errors.Is(err, ErrGone) {
		t.Fatalf("Adopt after exit = %v, want ErrGone", err)
	}
}

func TestKillAndWait(t *testing.T) {
	p, _ := startSleeper(t)
	if err := p.KillAndWait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Done not closed after KillAndWait")
	}
}

// Adopt (as after a daemon restart) watches a running process through a
// pidfd and signals it only after checking its identity.
func TestAdoptStartedProcess(t *testing.T) {
	p, marker := startSleeper(t)
	a, err := Adopt(p.PID, p.StartTime, marker)
	if err != nil {
		t.Fatal(err)
	}
	if a.PID != p.PID || a.StartTime != p.StartTime || a.Marker != marker {
		t.Fatalf("adopted %+v, started %+v", a, p)
	}
	select {
	case <-a.Done():
		t.Fatal("adopted Done closed while the process runs")
	default:
	}
	if err := a.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Wait(ctx); err != nil {
		t.Fatalf("adopted process: %v", err)
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("started process: %v", err)
	}
	if err := a.Signal(syscall.SIGKILL); !errors.Is(err, ErrGone) {
		t.Fatalf("Signal after exit = %v, want ErrGone", err)
	}
}

// An adopted process that exits on its own (nothing signals it, and the
// adopted Process does not reap it) closes Done through the pidfd.
func TestAdoptSeesExitOnItsOwn(t *testing.T) {
	// sh reads stdin until EOF: closing the pipe ends it.
	cmd := exec.Command("/bin/sh", "-c", "read x; exit 0", "bangertest-adopt")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-waited
	})
	waitExec(t, cmd.Process.Pid, "/bin/sh")
	st, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Adopt(cmd.Process.Pid, st, "bangertest-adopt")
	if err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Wait(ctx); err != nil {
		t.Fatalf("adopted process exit not seen: %v", err)
	}
	<-waited
	if cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("sh exited %d", cmd.ProcessState.ExitCode())
	}
}

// A zombie (exited, not yet reaped) holds its pid and start time but is not a
// running VMM.
func TestVerifyRefusesZombie(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "exit 3", "bangertest-zombie")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Wait() })
	pid := cmd.Process.Pid
	st, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for statFields(t, pid)[0] != "Z" {
		if time.Now().After(deadline) {
			t.Fatal("child did not become a zombie within 10s")
		}
		time.Sleep(time.Millisecond)
	}
	if got, err := StartTime(pid); err != nil || got != st {
		t.Fatalf("zombie start time %d, %v; want %d", got, err, st)
	}
	// No marker: only the state check can tell (a zombie's argv is empty).
	if err := Verify(pid, st, ""); !errors.Is(err, ErrGone) {
		t.Fatalf("Verify of a zombie = %v, want ErrGone", err)
	}
	if _, err := Adopt(pid, st, ""); !errors.Is(err, ErrGone) {
		t.Fatalf("Adopt of a zombie = %v, want ErrGone", err)
	}
}

// The command name in /proc/<pid>/stat is in parentheses and may itself
// contain ") " and numbers; the start time must still come from field 22.
func TestStartTimeWithHostileCommandName(t *testing.T) {
	plain, _ := startSleeper(t)
	hostile := sleeper(t, "bt) S 1 2 3 (x")
	p, err := Start([]string{hostile, "1000"}, filepath.Join(t.TempDir(), "log"), hostile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killStarted(t, p) })
	waitExec(t, p.PID, hostile)
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/stat")
	if !strings.Contains(string(b), "(bt) S 1 2 3 (x)") {
		t.Fatalf("comm not as intended: %q", b)
	}
	// Started after the plain one, and no later than now.
	if p.StartTime < plain.StartTime || p.StartTime > uptimeTicks(t) {
		t.Fatalf("start time %d not between %d and %d: misparsed", p.StartTime, plain.StartTime, uptimeTicks(t))
	}
	if err := Verify(p.PID, p.StartTime, hostile); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func TestStartLogAndExtraFiles(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "bangertest-vmm.log")
	if err := os.WriteFile(logPath, []byte("earlier\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := Start([]string{"/bin/sh", "-c", "echo out; echo err >&2; echo fd3 >&3; read x || echo stdin-eof", "bangertest-log"},
		logPath, "bangertest-log", w)
	w.Close() // the child holds its own copy
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killStarted(t, p) })
	got, err := io.ReadAll(r) // EOF once the child exits
	if err != nil || string(got) != "fd3\n" {
		t.Fatalf("extra file got %q, %v", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "earlier\nout\nerr\nstdin-eof\n" {
		t.Fatalf("log %q: want the earlier content kept, stdout and stderr appended, stdin at EOF", b)
	}
	if st, _ := os.Stat(logPath); st.Mode().Perm() != 0o600 {
		t.Fatalf("log mode %v", st.Mode().Perm())
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Start([]string{filepath.Join(dir, "bangertest-missing-vmm")}, filepath.Join(dir, "log"), ""); err == nil ||
		!strings.Contains(err.Error(), "bangertest-missing-vmm") {
		t.Fatalf("missing binary: %v", err)
	}
	if _, err := Start([]string{"/bin/true"}, filepath.Join(dir, "no-such-dir", "log"), ""); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unwritable log: %v", err)
	}
}

func TestCmdlineAndStartTimeOfMissingPID(t *testing.T) {
	if _, err := StartTime(1 << 30); err == nil {
		t.Fatal("StartTime of a missing pid succeeded")
	}
	if _, err := Cmdline(1 << 30); err == nil {
		t.Fatal("Cmdline of a missing pid succeeded")
	}
}

// A process is signalled and killed reliably the moment Start returns (a
// launch that fails at once kills its VMM straight away), even before its
// argv is readable in /proc.
func TestSignalRightAfterStart(t *testing.T) {
	bin := sleeper(t, "bangertest-vmm-fast")
	logPath := filepath.Join(t.TempDir(), "log")
	for i := range 300 {
		p, err := Start([]string{bin, "1000"}, logPath, bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Signal(syscall.SIGKILL); err != nil {
			killStarted(t, p)
			t.Fatalf("attempt %d: Signal right after Start = %v", i, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = p.Wait(ctx)
		cancel()
		if err != nil {
			killStarted(t, p)
			t.Fatalf("attempt %d: not dead after SIGKILL: %v", i, err)
		}
	}
}

// What Signal relies on for a process Start started: it is our unreaped
// child, so its pid is still its own even while /proc cannot (yet) confirm
// the marker. Here the marker never shows, which makes that moment last.
func TestSignalStartedChildWithoutVisibleMarker(t *testing.T) {
	bin := sleeper(t, "bangertest-vmm-nomark")
	p, err := Start([]string{bin, "1000"}, filepath.Join(t.TempDir(), "log"), "bangertest-not-in-argv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killStarted(t, p) })
	waitExec(t, p.PID, bin)
	if err := Verify(p.PID, p.StartTime, p.Marker); !errors.Is(err, ErrGone) {
		t.Fatalf("Verify = %v, want ErrGone (the marker is not in argv)", err)
	}
	if err := p.KillAndWait(10 * time.Second); err != nil {
		t.Fatalf("KillAndWait of our own child: %v", err)
	}
}
