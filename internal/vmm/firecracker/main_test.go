package firecracker

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"banger/internal/vmm/proc"
)

// The test binary doubles as a fake `firecracker` and a fake `jailer`: a
// wrapper script (writeFakeBinary) sets these variables and execs the test
// binary, whose TestMain then serves the validating fake instead of running
// tests. exec keeps the pid, so the driver's identity checks see the real
// thing: the pid it started, with the socket path in its argv.
const (
	envFakeMode   = "BANGER_FAKEFC_MODE" // firecracker | jailer | exit | hang
	envFakeSpec   = "BANGER_FAKEFC_SPEC"
	envFakeRecord = "BANGER_FAKEFC_RECORD" // JSON lines of apiRequest
	envFakeFail   = "BANGER_FAKEFC_FAIL"   // action_type to refuse
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envFakeMode); mode != "" {
		os.Exit(runFake(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// runFake is the fake VMM process. Like Firecracker, it fails when the API
// socket path exists, writes the guest console to stdout, and runs until
// signalled.
func runFake(mode string, args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "fake "+mode+": "+format+"\n", a...)
		return 1
	}
	flags := map[string]string{}
	var forwarded []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			forwarded = args[i+1:]
			break
		}
		if k, v, ok := strings.Cut(a, "="); ok {
			flags[k] = v
		} else if i+1 < len(args) {
			flags[a] = args[i+1]
			i++
		}
	}
	sock, root := flags["--api-sock"], ""
	switch mode {
	case "exit":
		return fail("refusing to start on purpose (args %q)", args)
	case "hang":
		select {} // never serves the API
	case "firecracker":
	case "jailer":
		for _, k := range []string{"--id", "--exec-file", "--uid", "--gid", "--chroot-base-dir"} {
			if flags[k] == "" {
				return fail("missing %s", k)
			}
		}
		if len(forwarded) != 2 || forwarded[0] != "--api-sock" {
			return fail("expected `-- --api-sock PATH`, got %q", forwarded)
		}
		root = filepath.Join(flags["--chroot-base-dir"], filepath.Base(flags["--exec-file"]), flags["--id"], "root")
		sock = filepath.Join(root, forwarded[1])
	default:
		return fail("unknown mode")
	}
	if sock == "" || flags["--id"] == "" {
		return fail("need --api-sock and --id, got %q", args)
	}
	if _, err := os.Lstat(sock); err == nil {
		return fail("Failed to open the API socket at %s: Address in use", sock)
	}

	doc, router, err := loadStrictSpec(os.Getenv(envFakeSpec))
	if err != nil {
		return fail("%v", err)
	}
	f := newFake(doc, router)
	f.id, f.root, f.failAction, f.console = flags["--id"], root, os.Getenv(envFakeFail), os.Stdout
	var mu sync.Mutex
	var recf *os.File
	if p := os.Getenv(envFakeRecord); p != "" {
		if recf, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			return fail("%v", err)
		}
	}
	f.record = func(r apiRequest) {
		if recf == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		b, _ := json.Marshal(r)
		_, _ = recf.Write(append(b, '\n'))
	}
	f.record(apiRequest{PID: os.Getpid()})
	if _, err := f.serve(sock); err != nil {
		return fail("%v", err)
	}
	select {} // until SIGTERM/SIGKILL, like Firecracker
}

// fakeEnv describes one fake VMM binary.
type fakeEnv struct {
	Binary string // the wrapper script
	Record string // its request record
}

// writeFakeBinary writes an executable named name in dir that execs the test
// binary as a fake in mode. extraEnv adds NAME=value pairs.
func writeFakeBinary(t *testing.T, dir, name, mode string, extraEnv ...string) fakeEnv {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fe := fakeEnv{Binary: filepath.Join(dir, name), Record: filepath.Join(dir, name+".record")}
	env := append([]string{
		envFakeMode + "=" + mode,
		envFakeSpec + "=" + specPath(t),
		envFakeRecord + "=" + fe.Record,
	}, extraEnv...)
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
	}
	fmt.Fprintf(&b, "exec %s \"$@\"\n", shellQuote(self))
	if err := os.WriteFile(fe.Binary, []byte(b.String()), 0o755); err != nil {
		t.Fatal(err)
	}
	return fe
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// records reads the fake's request record; the first entry carries its pid.
func (fe fakeEnv) records(t *testing.T) (pid int, reqs []apiRequest) {
	t.Helper()
	data, err := os.ReadFile(fe.Record)
	if os.IsNotExist(err) {
		return 0, nil // the fake never got as far as serving
	}
	if err != nil {
		t.Fatalf("read fake record: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var r apiRequest
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("fake record line %q: %v", line, err)
		}
		if r.PID != 0 {
			pid = r.PID
			continue
		}
		reqs = append(reqs, r)
	}
	return pid, reqs
}

// killOnCleanup makes sure the fake is gone when the test ends, whatever
// the driver did: it kills the pid the fake recorded if that process still
// has marker in its argv.
func (fe fakeEnv) killOnCleanup(t *testing.T, marker string) {
	t.Cleanup(func() {
		pid, _ := fe.records(t)
		if pid == 0 {
			return
		}
		st, err := proc.StartTime(pid)
		if err == nil && proc.Verify(pid, st, marker) == nil {
			t.Errorf("fake VMM pid %d was still running at the end of the test; killing it", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}
