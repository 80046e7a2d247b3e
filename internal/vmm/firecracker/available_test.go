package firecracker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/vmm"
)

func TestParseVersion(t *testing.T) {
	good := map[string][3]int{
		"Firecracker v1.7.0\n\nSupported snapshot data format versions: v1.0.0, v2.0.0\n": {1, 7, 0},
		"Firecracker v1.17.0-dev\n": {1, 17, 0},
		"Firecracker v1.4.1":        {1, 4, 1},
	}
	for out, want := range good {
		if v, _, err := parseVersion(out); err != nil || v != want {
			t.Errorf("parseVersion(%q) = %v, %v; want %v", out, v, err, want)
		}
	}
	if _, _, err := parseVersion("cloud-hypervisor v40.0\n"); err == nil {
		t.Error("parsed a version out of another program's output")
	}
	if !less([3]int{1, 3, 9}, MinVersion) || less([3]int{1, 4, 0}, MinVersion) || less([3]int{2, 0, 0}, MinVersion) {
		t.Error("version comparison is wrong")
	}
}

func TestProbe(t *testing.T) {
	dir := t.TempDir()
	fakeBin := func(name, version string) string {
		p := filepath.Join(dir, name)
		script := "#!/bin/sh\n[ \"$1\" = --version ] && printf 'Firecracker " + version + "\\n\\nSupported snapshot data format versions: v1.0.0\\n'\n"
		if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kvm := filepath.Join(dir, "kvm") // stands in for /dev/kvm
	if err := os.WriteFile(kvm, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := probe(fakeBin("fc-new", "v1.7.0"), kvm); err != nil {
		t.Errorf("usable setup: %v", err)
	}
	if err := probe(fakeBin("fc-old", "v1.3.1"), kvm); err == nil || !strings.Contains(err.Error(), "needs firecracker >= 1.4.0") {
		t.Errorf("old version: %v", err)
	}
	// Everything missing: the error names each missing piece.
	err := probe(filepath.Join(dir, "no-such-firecracker"), filepath.Join(dir, "no-kvm"))
	if err == nil || !strings.Contains(err.Error(), "no-such-firecracker") || !strings.Contains(err.Error(), "no-kvm") {
		t.Errorf("nothing present: %v", err)
	}
	if err := Probe(filepath.Join(dir, "no-such-firecracker")); err == nil {
		t.Error("Probe with a missing binary succeeded")
	}
	if accel, reason := New(Options{Binary: filepath.Join(dir, "no-such-firecracker")}).Accel(); accel != "kvm" || !strings.Contains(reason, "not usable") {
		t.Errorf("Accel = %q, %q", accel, reason)
	}
}

func TestInstanceID(t *testing.T) {
	for name, want := range map[string]string{
		"web1":                  "web1",
		"web_1.prod":            "web-1-prod",
		strings.Repeat("a", 70): strings.Repeat("a", 64),
	} {
		if got := instanceID(name); got != want {
			t.Errorf("instanceID(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestValidateSpec(t *testing.T) {
	ok := vmm.Spec{Name: "a", RunDir: "/run/a", Kernel: "/k", VCPU: 1, MemoryMiB: 128,
		Drives: []vmm.Drive{{ID: "root", Path: "/r", Root: true}}, NICs: []vmm.NIC{{ID: "eth0", Tap: "tap0"}}}
	if err := validateSpec(ok); err != nil {
		t.Fatal(err)
	}
	for mention, mutate := range map[string]func(*vmm.Spec){
		"1 to 32":          func(s *vmm.Spec) { s.VCPU = 0 },
		"must be positive": func(s *vmm.Spec) { s.MemoryMiB = 0 },
		"no kernel":        func(s *vmm.Spec) { s.Kernel = "" },
		"2 root drives":    func(s *vmm.Spec) { s.Drives = append(s.Drives, vmm.Drive{ID: "b", Path: "/b", Root: true}) },
		`drive id "a/b"`:   func(s *vmm.Spec) { s.Drives[0].ID = "a/b" },
		"no tap device":    func(s *vmm.Spec) { s.NICs[0].Tap = "" },
		"unknown format":   func(s *vmm.Spec) { s.Drives[0].Format = "vmdk" },
	} {
		s := ok
		s.Drives = append([]vmm.Drive(nil), ok.Drives...)
		s.NICs = append([]vmm.NIC(nil), ok.NICs...)
		mutate(&s)
		if err := validateSpec(s); err == nil || !strings.Contains(err.Error(), mention) {
			t.Errorf("want error mentioning %q, got %v", mention, err)
		}
	}
}

func TestRemoveStaleRefusesRegularFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.sock")
	if err := os.WriteFile(p, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := removeStale(p); err == nil {
		t.Fatal("removeStale removed a regular file")
	}
	if err := removeStale(p + ".missing"); err != nil {
		t.Errorf("missing path: %v", err)
	}
}

func TestFreshLogKeepsPreviousRun(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmm.log")
	if err := freshLog(p); err != nil { // first run: nothing to keep
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("run 1 log"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := freshLog(p); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || len(b) != 0 {
		t.Errorf("log not fresh: %q, %v", b, err)
	}
	if b, _ := os.ReadFile(p + ".old"); string(b) != "run 1 log" {
		t.Errorf("previous log = %q", b)
	}
}
