package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/vmm"
	"banger/internal/vmm/proc"
)

// testSpec builds a full spec (initrd, root + work + read-only seed drive,
// one NIC, a guest channel) whose files exist under a temp dir.
func testSpec(t *testing.T) vmm.Spec {
	t.Helper()
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("\x7fELF fake "+name), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	return vmm.Spec{
		Name:      "web1",
		RunDir:    run,
		Kernel:    file("vmlinux"),
		Initrd:    file("initrd.img"),
		Cmdline:   "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/sbin/banger-init",
		VCPU:      2,
		MemoryMiB: 512,
		Drives: []vmm.Drive{
			{ID: "root", Path: file("root.img"), Format: vmm.FormatRaw, Root: true},
			{ID: "work", Path: file("work.img"), Format: vmm.FormatRaw},
			{ID: "seed", Path: file("seed.img"), ReadOnly: true},
		},
		NICs:         []vmm.NIC{{ID: "eth0", Tap: "tap-web1", MAC: "02:fc:00:00:00:01"}},
		ConsoleLog:   filepath.Join(run, "console.log"),
		GuestChannel: filepath.Join(run, "agent.sock"),
	}
}

var wantSequence = []string{
	"PUT /logger",
	"PUT /machine-config",
	"PUT /boot-source",
	"PUT /drives/root",
	"PUT /drives/work",
	"PUT /drives/seed",
	"PUT /network-interfaces/eth0",
	"PUT /vsock",
	"PUT /actions",
}

// checkConfigureRequests asserts the configure sequence: every request valid
// against the spec, in order, with the values of spec. paths maps a spec
// path to the path Firecracker must be given (identity unless jailed).
func checkConfigureRequests(t *testing.T, reqs []apiRequest, spec vmm.Spec, logPath string, paths func(string) string) {
	t.Helper()
	assertAllValid(t, reqs)
	var got []string
	for _, r := range reqs {
		if r.Method == http.MethodGet { // readiness polls
			continue
		}
		got = append(got, r.String())
	}
	if !reflect.DeepEqual(got, wantSequence) {
		t.Fatalf("request sequence:\n got %q\nwant %q", got, wantSequence)
	}
	body := map[string]map[string]any{}
	for _, r := range reqs {
		body[r.String()] = r.Body
	}
	want := map[string]map[string]any{
		"PUT /logger":         {"log_path": logPath, "level": "Info", "show_level": true},
		"PUT /machine-config": {"vcpu_count": float64(spec.VCPU), "mem_size_mib": float64(spec.MemoryMiB)},
		"PUT /boot-source": {
			"kernel_image_path": paths(spec.Kernel),
			"initrd_path":       paths(spec.Initrd),
			"boot_args":         spec.Cmdline,
		},
		"PUT /network-interfaces/eth0": {"iface_id": "eth0", "host_dev_name": "tap-web1", "guest_mac": "02:fc:00:00:00:01"},
		"PUT /vsock":                   {"guest_cid": float64(3), "uds_path": paths(spec.GuestChannel)},
		"PUT /actions":                 {"action_type": "InstanceStart"},
	}
	for _, d := range spec.Drives {
		want["PUT /drives/"+d.ID] = map[string]any{
			"drive_id":       d.ID,
			"path_on_host":   paths(d.Path),
			"is_root_device": d.Root,
			"is_read_only":   d.ReadOnly,
		}
	}
	for k, w := range want {
		if !reflect.DeepEqual(body[k], w) {
			t.Errorf("%s body:\n got %v\nwant %v", k, body[k], w)
		}
	}
}

func identity(p string) string { return p }

func TestConfigureSendsValidRequestsInOrder(t *testing.T) {
	f, sock := startFake(t)
	spec := testSpec(t)
	logPath := filepath.Join(spec.RunDir, logFileName)
	if err := os.WriteFile(logPath, nil, 0o600); err != nil { // Start's prepare creates it
		t.Fatal(err)
	}
	c := NewClient(sock)
	defer c.Close()
	if err := configure(context.Background(), c, spec); err != nil {
		t.Fatal(err)
	}
	checkConfigureRequests(t, f.requests(), spec, logPath, identity)
}

func TestCtrlAltDelAndDescribeInstance(t *testing.T) {
	f, sock := startFake(t)
	c := NewClient(sock)
	defer c.Close()
	ctx := context.Background()

	info, err := c.DescribeInstance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != "Not started" || info.AppName != "Firecracker" || info.VMMVersion == "" || info.ID == "" {
		t.Errorf("DescribeInstance before boot = %+v", info)
	}
	m := &machine{c: c}
	// Firecracker refuses SendCtrlAltDel before boot; the error must carry
	// its fault_message.
	err = m.CtrlAltDel(ctx)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("CtrlAltDel before boot: %v, want a 400 APIError with the fault message", err)
	}
	if err := c.Action(ctx, ActionInstanceStart); err != nil {
		t.Fatal(err)
	}
	if err := m.CtrlAltDel(ctx); err != nil {
		t.Fatalf("CtrlAltDel: %v", err)
	}
	if info, err = c.DescribeInstance(ctx); err != nil || info.State != "Running" {
		t.Fatalf("DescribeInstance after boot = %+v, %v", info, err)
	}
	reqs := f.requests()
	assertAllValid(t, reqs)
	if last := reqs[len(reqs)-2]; last.String() != "PUT /actions" || last.Body["action_type"] != "SendCtrlAltDel" {
		t.Errorf("CtrlAltDel sent %s %v", last, last.Body)
	}
}

// TestValidatorRejectsInvalidBodies proves the fake's validator bites: a
// contract test against a validator that accepts anything proves nothing.
func TestValidatorRejectsInvalidBodies(t *testing.T) {
	f, sock := startFake(t)
	c := NewClient(sock)
	defer c.Close()
	ctx := context.Background()

	// Positive control: a maximal valid drive, with nested objects, passes
	// the strict schemas.
	valid := `{"drive_id":"root","path_on_host":"` + sock + `","is_root_device":true,"is_read_only":false,` +
		`"cache_type":"Writeback","io_engine":"Sync","rate_limiter":{"bandwidth":{"size":1048576,"refill_time":1000},"ops":{"size":100,"one_time_burst":10,"refill_time":1000}}}`
	if err := c.do(ctx, http.MethodPut, "/drives/root", json.RawMessage(valid), nil); err != nil {
		t.Fatalf("valid drive rejected: %v", err)
	}

	cases := []struct {
		name, method, path, body, mention string
	}{
		{"vcpu_count as string", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":256}`, "vcpu_count"},
		{"vcpu_count above maximum", "PUT", "/machine-config", `{"vcpu_count":64,"mem_size_mib":256}`, "vcpu_count"},
		{"missing mem_size_mib", "PUT", "/machine-config", `{"vcpu_count":2}`, "mem_size_mib"},
		{"unknown field", "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"/x","is_root_device":true,"is_read_only":false,"bogus":1}`, "bogus"},
		{"missing drive_id", "PUT", "/drives/root", `{"path_on_host":"/x","is_root_device":true,"is_read_only":false}`, "drive_id"},
		{"missing is_root_device", "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"/x"}`, "is_root_device"},
		{"unknown nested field", "PUT", "/drives/root", `{"drive_id":"root","is_root_device":false,"rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"burst":5}}}`, "burst"},
		{"is_read_only as string", "PUT", "/drives/root", `{"drive_id":"root","is_root_device":false,"is_read_only":"yes"}`, "is_read_only"},
		{"boot source without kernel", "PUT", "/boot-source", `{"boot_args":"console=ttyS0"}`, "kernel_image_path"},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, "action_type"},
		{"vsock reserved cid", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/x"}`, "guest_cid"},
		{"logger bad level", "PUT", "/logger", `{"log_path":"/x","level":"Verbose"}`, "level"},
		{"nic without host_dev_name", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, "host_dev_name"},
		{"unknown path", "PUT", "/frobnicate", `{}`, ""},
		{"wrong method", "DELETE", "/drives/root", ``, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.requests())
			var body any
			if tc.body != "" {
				body = json.RawMessage(tc.body)
			}
			err := c.do(ctx, tc.method, tc.path, body, nil)
			var apiErr *APIError
			if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest {
				t.Fatalf("got %v, want a 400 from the validator", err)
			}
			reqs := f.requests()
			if len(reqs) != before+1 || reqs[before].Invalid == "" {
				t.Fatalf("request not recorded as invalid: %+v", reqs[before:])
			}
			if !strings.Contains(reqs[before].Invalid, tc.mention) {
				t.Errorf("validator reason %q does not mention %q", reqs[before].Invalid, tc.mention)
			}
			if !strings.Contains(apiErr.FaultMessage, "invalid request") {
				t.Errorf("fault_message %q not passed through", apiErr.FaultMessage)
			}
		})
	}
}

func TestStartRefusesQcow2BeforeLaunch(t *testing.T) {
	spec := testSpec(t)
	spec.Drives[1].Format = vmm.FormatQcow2
	marker := filepath.Join(t.TempDir(), "launched")
	bin := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\ntouch '"+marker+"'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{Binary: bin}).Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "firecracker opens raw images only; use the reflink, dm or copy root backend") ||
		!strings.Contains(err.Error(), "drive work") {
		t.Fatalf("Start with a qcow2 drive: %v", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("firecracker was launched for a qcow2 drive")
	}
	if entries, _ := os.ReadDir(spec.RunDir); len(entries) != 0 {
		t.Errorf("Start left files in the run dir: %v", entries)
	}
}

func TestStartEndToEnd(t *testing.T) {
	spec := testSpec(t)
	fe := writeFakeBinary(t, t.TempDir(), "firecracker", "firecracker")
	sock := filepath.Join(spec.RunDir, apiSocketName)
	fe.killOnCleanup(t, sock)
	d := New(Options{Binary: fe.Binary})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	h := m.Handle()
	pid, reqs := fe.records(t)
	if h.Driver != "firecracker" || h.Accel != "kvm" || h.ControlSocket != sock || h.PID != pid {
		t.Errorf("handle = %+v (fake pid %d)", h, pid)
	}
	if st, err := proc.StartTime(h.PID); err != nil || st != h.StartTime || h.StartTime == 0 {
		t.Errorf("handle start time %d, /proc says %d (%v)", h.StartTime, st, err)
	}
	if argv, _ := proc.Cmdline(h.PID); !reflect.DeepEqual(argv[1:], []string{"--api-sock", sock, "--id", "web1"}) {
		t.Errorf("firecracker argv = %q", argv)
	}
	checkConfigureRequests(t, reqs, spec, filepath.Join(spec.RunDir, logFileName), identity)

	// Firecracker's stdout (the serial console) lands in the console log.
	if b, _ := os.ReadFile(spec.ConsoleLog); !strings.Contains(string(b), "fake guest console") {
		t.Errorf("console log = %q", b)
	}
	// The vsock socket Firecracker bound is where the daemon expects it.
	if conn, err := net.Dial("unix", spec.GuestChannel); err != nil {
		t.Errorf("guest channel: %v", err)
	} else {
		conn.Close()
	}
	if err := m.CtrlAltDel(ctx); err != nil {
		t.Errorf("CtrlAltDel: %v", err)
	}

	// A second daemon adopts the running machine.
	adopted, err := New(Options{Binary: fe.Binary}).Adopt(ctx, h)
	if err != nil {
		t.Fatalf("Adopt running machine: %v", err)
	}
	defer adopted.Close()
	if adopted.Handle() != h {
		t.Errorf("adopted handle %+v, want %+v", adopted.Handle(), h)
	}
	if err := adopted.CtrlAltDel(ctx); err != nil {
		t.Errorf("CtrlAltDel through adopted machine: %v", err)
	}
	// Starting again on the same run dir must not clobber the running VMM.
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "already answers") {
		t.Errorf("second Start on a live socket: %v", err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("second Start removed the live socket: %v", err)
	}

	if err := m.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for name, done := range map[string]<-chan struct{}{"started": m.Done(), "adopted": adopted.Done()} {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("Done of the %s machine not closed after SIGKILL", name)
		}
	}
	if err := m.Signal(syscall.SIGTERM); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Signal after exit: %v, want ErrNotRunning", err)
	}
	if _, err := d.Adopt(ctx, h); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Adopt stale handle: %v, want ErrNotRunning", err)
	}
	// A recycled pid (different start time) is not ours either.
	self := vmm.Handle{Driver: "firecracker", PID: os.Getpid(), StartTime: 1, ControlSocket: sock}
	if _, err := d.Adopt(ctx, self); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Adopt with a foreign pid: %v, want ErrNotRunning", err)
	}
}

func TestQuitSendsSIGTERM(t *testing.T) {
	spec := testSpec(t)
	fe := writeFakeBinary(t, t.TempDir(), "firecracker", "firecracker")
	fe.killOnCleanup(t, filepath.Join(spec.RunDir, apiSocketName))
	m, err := New(Options{Binary: fe.Binary}).Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Quit(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Quit did not stop the VMM")
	}
}

// startFailure starts spec with a fake in mode and returns Start's error,
// checking that nothing is left running or lying around.
func startFailure(t *testing.T, mode string, tune func(*Driver), env ...string) error {
	t.Helper()
	spec := testSpec(t)
	fe := writeFakeBinary(t, t.TempDir(), "firecracker", mode, env...)
	sock := filepath.Join(spec.RunDir, apiSocketName)
	fe.killOnCleanup(t, sock)
	d := New(Options{Binary: fe.Binary})
	if tune != nil {
		tune(d)
	}
	m, err := d.Start(context.Background(), spec)
	if err == nil {
		m.Signal(syscall.SIGKILL)
		t.Fatal("Start succeeded")
	}
	if pid, _ := fe.records(t); pid != 0 {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("fake pid %d still exists after the failed Start (kill 0: %v)", pid, err)
		}
	}
	for _, p := range []string{sock, spec.GuestChannel} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("failed Start left %s behind", p)
		}
	}
	return err
}

func TestStartFailsEarlyWhenFirecrackerExits(t *testing.T) {
	begin := time.Now()
	err := startFailure(t, "exit", nil)
	t.Logf("Start error: %v", err)
	if !strings.Contains(err.Error(), "exited before its API socket answered") ||
		!strings.Contains(err.Error(), "refusing to start on purpose") {
		t.Fatalf("error lacks the cause or the process output: %v", err)
	}
	if time.Since(begin) > 5*time.Second {
		t.Errorf("Start took %s to notice the exit", time.Since(begin))
	}
}

func TestStartTimesOutWhenSocketNeverAnswers(t *testing.T) {
	err := startFailure(t, "hang", func(d *Driver) { d.readyTimeout = 300 * time.Millisecond })
	t.Logf("Start error: %v", err)
	if !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("error: %v", err)
	}
}

func TestStartFailureAfterLaunchKillsFirecracker(t *testing.T) {
	err := startFailure(t, "firecracker", nil, envFakeFail+"=InstanceStart")
	t.Logf("Start error: %v", err)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || !strings.Contains(err.Error(), "fake failure of InstanceStart") ||
		!strings.Contains(err.Error(), "configure instance start") {
		t.Fatalf("error should carry Firecracker's fault_message: %v", err)
	}
}

func TestStartJailed(t *testing.T) {
	spec := testSpec(t)
	bins := t.TempDir()
	fc := writeFakeBinary(t, bins, "firecracker", "firecracker") // the --exec-file; never run
	jailer := writeFakeBinary(t, bins, "jailer", "jailer")
	base := filepath.Join(t.TempDir(), "jail")
	jo := &JailerOptions{Binary: jailer.Binary, ChrootBase: base, UID: os.Getuid(), GID: os.Getgid()}
	root := filepath.Join(base, "firecracker", "web1", "root")
	jailer.killOnCleanup(t, "web1")

	d := New(Options{Binary: fc.Binary, Jailer: jo})
	ctx := context.Background()
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	h := m.Handle()
	if want := filepath.Join(root, "run", apiSocketName); h.ControlSocket != want {
		t.Errorf("control socket %s, want %s", h.ControlSocket, want)
	}
	if argv, _ := proc.Cmdline(h.PID); !reflect.DeepEqual(argv[1:], []string{
		"--id", "web1", "--exec-file", fc.Binary, "--uid", strconv.Itoa(jo.UID), "--gid", strconv.Itoa(jo.GID),
		"--chroot-base-dir", base, "--", "--api-sock", "/run/firecracker.sock"}) {
		t.Errorf("jailer argv = %q", argv)
	}
	// Firecracker is given paths inside the jail; the fake checked that
	// each one exists under the chroot.
	jailPath := map[string]string{spec.Kernel: "/kernel", spec.Initrd: "/initrd", spec.GuestChannel: "/run/vsock.sock"}
	for _, dr := range spec.Drives {
		jailPath[dr.Path] = "/drive-" + dr.ID
	}
	_, reqs := jailer.records(t)
	checkConfigureRequests(t, reqs, spec, "/run/vmm.log", func(p string) string { return jailPath[p] })
	for host, jp := range jailPath {
		if jp == "/run/vsock.sock" {
			continue
		}
		a, _ := os.Stat(host)
		b, err := os.Stat(filepath.Join(root, jp))
		if err != nil || !os.SameFile(a, b) {
			t.Errorf("%s is not hard linked at %s: %v", host, jp, err)
		}
	}
	if conn, err := net.Dial("unix", spec.GuestChannel); err != nil {
		t.Errorf("guest channel through the symlink into the jail: %v", err)
	} else {
		conn.Close()
	}

	adopted, err := New(Options{Binary: fc.Binary, Jailer: jo}).Adopt(ctx, h)
	if err != nil {
		t.Fatalf("Adopt jailed machine: %v", err)
	}
	adopted.Close()
	if err := m.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-m.Done()
	if _, err := d.Adopt(ctx, h); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Adopt stale jailed handle: %v", err)
	}
	// The next Start of the same VM replaces the stale jail.
	m2, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("restart over a stale jail: %v", err)
	}
	m2.Signal(syscall.SIGKILL)
	<-m2.Done()
	m2.Close()
}
