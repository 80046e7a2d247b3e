package qemu

import (
	"bufio"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"banger/internal/vmm"
)

func testSpec() vmm.Spec {
	return vmm.Spec{
		Name:       "bangertest-args",
		RunDir:     "/run/banger/vms/0123",
		Kernel:     "/k/vmlinuz",
		Cmdline:    "console=ttyS0 root=/dev/vda rw",
		VCPU:       2,
		MemoryMiB:  512,
		ConsoleLog: "/s/vms/0123/console.log",
	}
}

func mustArgs(t *testing.T, spec vmm.Spec, accel string) []string {
	t.Helper()
	a, err := New(Options{}).Args(spec, accel)
	if err != nil {
		t.Fatalf("Args(%s): %v", accel, err)
	}
	return a
}

// values returns the value after every occurrence of flag in argv.
func values(argv []string, flag string) []string {
	var v []string
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			v = append(v, argv[i+1])
		}
	}
	return v
}

// value returns the only value of flag, failing when it is absent or repeated.
func value(t *testing.T, argv []string, flag string) string {
	t.Helper()
	v := values(argv, flag)
	if len(v) != 1 {
		t.Fatalf("%s given %d times (%q) in %q", flag, len(v), v, argv)
	}
	return v[0]
}

func TestArgsCommon(t *testing.T) {
	for _, accel := range []string{"tcg", "kvm"} {
		t.Run(accel, func(t *testing.T) {
			a := mustArgs(t, testSpec(), accel)
			if a[0] != "qemu-system-x86_64" {
				t.Errorf("argv[0] = %q, want the default binary", a[0])
			}
			for flag, want := range map[string]string{
				"-name":    "banger-bangertest-args",
				"-M":       "microvm",
				"-accel":   accel,
				"-m":       "512",
				"-smp":     "2",
				"-kernel":  "/k/vmlinuz",
				"-display": "none",
				"-serial":  "chardev:console",
				"-qmp":     "unix:/run/banger/vms/0123/qmp.sock,server=on,wait=off",
				"-chardev": "file,id=console,path=/s/vms/0123/console.log,append=on",
			} {
				if got := value(t, a, flag); got != want {
					t.Errorf("%s %q, want %q", flag, got, want)
				}
			}
			for _, flag := range []string{"-nodefaults", "-no-user-config", "-no-reboot"} {
				if !slices.Contains(a, flag) {
					t.Errorf("%s missing from %q", flag, a)
				}
			}
			for _, flag := range []string{"-initrd", "-drive", "-netdev", "-device"} {
				if v := values(a, flag); len(v) > 0 {
					t.Errorf("%s %q present for a spec without one", flag, v)
				}
			}
		})
	}
}

func TestArgsBinaryOption(t *testing.T) {
	a, err := New(Options{Binary: "/opt/bangertest/qemu"}).Args(testSpec(), "tcg")
	if err != nil {
		t.Fatal(err)
	}
	if a[0] != "/opt/bangertest/qemu" {
		t.Errorf("argv[0] = %q", a[0])
	}
}

func TestArgsTCGCmdline(t *testing.T) {
	spec := testSpec()
	a := mustArgs(t, spec, "tcg")
	cmdline := value(t, a, "-append")
	if !strings.HasPrefix(cmdline, spec.Cmdline+" ") {
		t.Errorf("-append %q does not start with the spec's cmdline %q", cmdline, spec.Cmdline)
	}
	if n := strings.Count(cmdline, "tsc=reliable"); n != 1 {
		t.Errorf("tsc=reliable appears %d times in %q, want once", n, cmdline)
	}
	if slices.Contains(a, "-cpu") {
		t.Errorf("-cpu given under TCG: %q", a)
	}
	khz, err := HostTSCkHz()
	if err != nil {
		if strings.Contains(cmdline, "tsc_early_khz=") {
			t.Errorf("tsc_early_khz in %q although HostTSCkHz fails (%v)", cmdline, err)
		}
		t.Skipf("HostTSCkHz: %v; tsc_early_khz not checked", err)
	}
	want := "tsc_early_khz=" + strconv.Itoa(khz)
	if fields := strings.Fields(cmdline); !slices.Contains(fields, want) || strings.Count(cmdline, "tsc_early_khz=") != 1 {
		t.Errorf("-append %q: want %s exactly once", cmdline, want)
	}
}

// A cmdline that already sets the TSC options is passed through unchanged.
func TestArgsTCGKeepsExplicitTSC(t *testing.T) {
	for _, cmdline := range []string{
		"console=ttyS0 tsc_early_khz=1234567 tsc=unstable",
		"tsc=reliable tsc_early_khz=2000000 console=ttyS0",
	} {
		spec := testSpec()
		spec.Cmdline = cmdline
		if got := value(t, mustArgs(t, spec, "tcg"), "-append"); got != cmdline {
			t.Errorf("-append %q, want the spec's %q unchanged", got, cmdline)
		}
	}
	// Only the missing one is added.
	spec := testSpec()
	spec.Cmdline = "console=ttyS0 tsc=unstable"
	got := value(t, mustArgs(t, spec, "tcg"), "-append")
	if strings.Count(got, "tsc=") != 1 || !strings.Contains(got, "tsc=unstable") {
		t.Errorf("-append %q: the spec's tsc=unstable must stay the only tsc=", got)
	}
	if _, err := HostTSCkHz(); err == nil && strings.Count(got, "tsc_early_khz=") != 1 {
		t.Errorf("-append %q: tsc_early_khz not added", got)
	}
}

func TestArgsKVM(t *testing.T) {
	spec := testSpec()
	a := mustArgs(t, spec, "kvm")
	if got := value(t, a, "-append"); got != spec.Cmdline {
		t.Errorf("-append %q under KVM, want the spec's %q unchanged", got, spec.Cmdline)
	}
	if got := value(t, a, "-cpu"); got != "max" {
		t.Errorf("-cpu %q under KVM, want max", got)
	}
}

func TestArgsInitrd(t *testing.T) {
	spec := testSpec()
	spec.Initrd = "/k/initrd.img"
	if got := value(t, mustArgs(t, spec, "tcg"), "-initrd"); got != "/k/initrd.img" {
		t.Errorf("-initrd %q", got)
	}
}

func TestArgsDrivesAndNICs(t *testing.T) {
	spec := testSpec()
	spec.Drives = []vmm.Drive{
		{ID: "root", Path: "/s/vms/0123/root.qcow2", Format: vmm.FormatQcow2, Root: true},
		{ID: "work", Path: "/s/vms/0123/work.ext4"}, // no format: raw
		{ID: "seed", Path: "/s/a,b/seed.img", Format: vmm.FormatRaw, ReadOnly: true},
	}
	spec.NICs = []vmm.NIC{
		{ID: "net0", Tap: "bgtap0", MAC: "02:42:0a:d5:00:02"},
		{ID: "net1", Tap: "bgtap1", MAC: "02:42:0a:d5:00:03"},
	}
	spec.GuestChannel = "/run/banger/vms/0123/agent.sock"
	a := mustArgs(t, spec, "tcg")

	wantDrives := []string{
		"id=root,file=/s/vms/0123/root.qcow2,format=qcow2,if=none,cache=writeback,discard=unmap",
		"id=work,file=/s/vms/0123/work.ext4,format=raw,if=none,cache=writeback,discard=unmap",
		// A comma in a path is doubled, QEMU's escape.
		"id=seed,file=/s/a,,b/seed.img,format=raw,if=none,cache=writeback,discard=unmap,readonly=on",
	}
	if got := values(a, "-drive"); !slices.Equal(got, wantDrives) {
		t.Errorf("-drive\n%q\nwant\n%q", got, wantDrives)
	}
	wantNetdevs := []string{
		"tap,id=net0,ifname=bgtap0,script=no,downscript=no",
		"tap,id=net1,ifname=bgtap1,script=no,downscript=no",
	}
	if got := values(a, "-netdev"); !slices.Equal(got, wantNetdevs) {
		t.Errorf("-netdev\n%q\nwant\n%q", got, wantNetdevs)
	}
	// A NIC with a descriptor (from the root helper) is passed by fd, in
	// the order the descriptors are inherited (3 onwards).
	fdSpec := spec
	fdSpec.NICs = []vmm.NIC{spec.NICs[0], {ID: "net1", Tap: "bgtap1", MAC: "02:42:0a:d5:00:03", File: os.Stdin}}
	wantFD := []string{"tap,id=net0,ifname=bgtap0,script=no,downscript=no", "tap,id=net1,fd=3"}
	if got := values(mustArgs(t, fdSpec, "tcg"), "-netdev"); !slices.Equal(got, wantFD) {
		t.Errorf("-netdev with a descriptor\n%q\nwant\n%q", got, wantFD)
	}
	if fs := nicFiles(fdSpec); len(fs) != 1 || fs[0] != os.Stdin {
		t.Errorf("nicFiles %v", fs)
	}
	// Devices in order: disks (so root is /dev/vda), NICs, then the agent port.
	wantDevices := []string{
		"virtio-blk-device,drive=root",
		"virtio-blk-device,drive=work",
		"virtio-blk-device,drive=seed",
		"virtio-net-device,netdev=net0,mac=02:42:0a:d5:00:02",
		"virtio-net-device,netdev=net1,mac=02:42:0a:d5:00:03",
		"virtio-serial-device",
		"virtserialport,chardev=agent,name=banger.agent",
	}
	if got := values(a, "-device"); !slices.Equal(got, wantDevices) {
		t.Errorf("-device\n%q\nwant\n%q", got, wantDevices)
	}
	wantChardevs := []string{
		"socket,id=agent,path=/run/banger/vms/0123/agent.sock,server=on,wait=off",
		"file,id=console,path=/s/vms/0123/console.log,append=on",
	}
	if got := values(a, "-chardev"); !slices.Equal(got, wantChardevs) {
		t.Errorf("-chardev\n%q\nwant\n%q", got, wantChardevs)
	}
}

func TestArgsEscapesCommasInPaths(t *testing.T) {
	spec := testSpec()
	spec.RunDir = "/tmp/a,b"
	spec.ConsoleLog = "/tmp/c,d/console.log"
	spec.GuestChannel = "/tmp/a,b/agent.sock"
	a := mustArgs(t, spec, "tcg")
	if got, want := value(t, a, "-qmp"), "unix:/tmp/a,,b/qmp.sock,server=on,wait=off"; got != want {
		t.Errorf("-qmp %q, want %q", got, want)
	}
	want := []string{
		"socket,id=agent,path=/tmp/a,,b/agent.sock,server=on,wait=off",
		"file,id=console,path=/tmp/c,,d/console.log,append=on",
	}
	if got := values(a, "-chardev"); !slices.Equal(got, want) {
		t.Errorf("-chardev %q, want %q", got, want)
	}
}

func TestArgsRejectsInvalidSizes(t *testing.T) {
	for _, tc := range []struct{ vcpu, mem int }{{0, 512}, {-1, 512}, {1, 63}, {1, 0}, {0, 0}} {
		spec := testSpec()
		spec.VCPU, spec.MemoryMiB = tc.vcpu, tc.mem
		a, err := New(Options{}).Args(spec, "tcg")
		if err == nil {
			t.Errorf("Args(vcpu %d, memory %d MiB) = %q, want an error", tc.vcpu, tc.mem, a)
			continue
		}
		if !strings.Contains(err.Error(), "invalid vcpu") {
			t.Errorf("Args(vcpu %d, memory %d MiB) error %q", tc.vcpu, tc.mem, err)
		}
	}
	// The smallest valid machine.
	spec := testSpec()
	spec.VCPU, spec.MemoryMiB = 1, 64
	if _, err := New(Options{}).Args(spec, "tcg"); err != nil {
		t.Errorf("Args(vcpu 1, memory 64 MiB): %v", err)
	}
}

// HostTSCkHz reads the first "cpu MHz" of /proc/cpuinfo.
func TestHostTSCkHz(t *testing.T) {
	khz, err := HostTSCkHz()
	f, ferr := os.Open("/proc/cpuinfo")
	if ferr != nil {
		t.Skipf("no /proc/cpuinfo: %v", ferr)
	}
	defer f.Close()
	var mhz float64
	found := false
	for sc := bufio.NewScanner(f); sc.Scan() && !found; {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, ferr = strconv.ParseFloat(strings.TrimSpace(v), 64); ferr != nil {
				t.Fatalf("parse %q: %v", v, ferr)
			}
			found = true
		}
	}
	if !found {
		if err == nil {
			t.Fatalf("HostTSCkHz = %d, but /proc/cpuinfo has no cpu MHz", khz)
		}
		t.Skipf("no cpu MHz in /proc/cpuinfo (HostTSCkHz: %v)", err)
	}
	if err != nil {
		t.Fatalf("HostTSCkHz: %v", err)
	}
	// Any x86 CPU of the last decades runs between 100 MHz and 10 GHz.
	if khz < 100_000 || khz > 10_000_000 {
		t.Errorf("HostTSCkHz = %d kHz, implausible", khz)
	}
	if diff := float64(khz) - mhz*1000; diff < -1 || diff > 1 {
		t.Errorf("HostTSCkHz = %d kHz, /proc/cpuinfo says %v MHz", khz, mhz)
	}
}
