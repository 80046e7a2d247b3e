package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// doctorHome points HOME and the XDG directories at a temporary tree and
// returns the config file path of that layout.
func doctorHome(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	t.Setenv("BANGER_SYSTEM", "")
	t.Setenv("HOME", filepath.Join(root, "home"))
	for env, dir := range map[string]string{"XDG_CONFIG_HOME": "config", "XDG_STATE_HOME": "state",
		"XDG_CACHE_HOME": "cache", "XDG_RUNTIME_DIR": "run"} {
		t.Setenv(env, filepath.Join(root, dir))
	}
	return filepath.Join(root, "config", "banger", "config.toml")
}

// fakeBangerd puts executables named bangerd, banger-agent and banger-init first in PATH,
// so the bangerd check passes for a test binary.
func fakeBangerd(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"bangerd", "banger-agent", "banger-init"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

type doctorRow struct {
	Name, Status, Evidence, Remedy string
}

// runDoctor runs `banger doctor args...` under a root command as Main would.
func runDoctor(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb}
	root := &cobra.Command{Use: "banger", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(a.doctorCmd())
	root.SetArgs(append([]string{"doctor"}, args...))
	err := root.Execute()
	if errb.Len() > 0 {
		t.Logf("stderr: %s", errb.String())
	}
	return out.String(), err
}

func decodeDoctor(t *testing.T, out string) []doctorRow {
	t.Helper()
	var objs []map[string]string
	if err := json.Unmarshal([]byte(out), &objs); err != nil {
		t.Fatalf("doctor --json printed invalid JSON: %v\n%s", err, out)
	}
	var rows []doctorRow
	for _, o := range objs {
		if len(o) != 4 {
			t.Errorf("object %v: want exactly name, status, evidence, remedy", o)
		}
		rows = append(rows, doctorRow{o["name"], o["status"], o["evidence"], o["remedy"]})
	}
	return rows
}

func TestDoctorFailExitsOne(t *testing.T) {
	cfg := doctorHome(t)
	fakeBangerd(t)
	if err := os.MkdirAll(filepath.Dir(cfg), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte("[vm]\nvcpus = 4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runDoctor(t, "--json")
	var ee ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("doctor with a FAIL returned %v, want ExitError{Code: 1}", err)
	}
	found := false
	for _, r := range decodeDoctor(t, out) {
		if r.Name == "config" {
			found = true
			if r.Status != "FAIL" || !strings.Contains(r.Evidence, "vm.vcpus") || !strings.Contains(r.Remedy, "vm.vcpus") {
				t.Errorf("config = %+v", r)
			}
		}
	}
	if !found {
		t.Error("no config check in the output")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(cfg))), "state", "banger")); err == nil {
		t.Error("doctor created the state directory")
	}
}

// TestDoctorExitFollowsFailures: the exit status is 1 exactly when a check
// FAILs (on this machine class none does with bangerd installed).
func TestDoctorExitFollowsFailures(t *testing.T) {
	doctorHome(t)
	fakeBangerd(t)
	out, err := runDoctor(t, "--json")
	var fails []doctorRow
	for _, r := range decodeDoctor(t, out) {
		if r.Status == "FAIL" {
			fails = append(fails, r)
		}
	}
	var ee ExitError
	switch {
	case len(fails) == 0 && err != nil:
		t.Errorf("no FAIL but doctor returned %v", err)
	case len(fails) > 0 && (!errors.As(err, &ee) || ee.Code != 1):
		t.Errorf("FAILs %+v but doctor returned %v", fails, err)
	}
	if len(fails) > 0 {
		t.Logf("this host FAILs: %+v", fails)
	}
}

func TestDoctorTable(t *testing.T) {
	doctorHome(t)
	fakeBangerd(t)
	out, _ := runDoctor(t)
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[0], "CHECK") || !strings.Contains(lines[0], "STATUS") || !strings.Contains(lines[0], "EVIDENCE") {
		t.Errorf("header %q", lines[0])
	}
	for _, want := range []string{"arch ", "PASS", "WARN", "fix: banger ssh-config --install", "passed,", "warnings,", "failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	t.Log("\n" + out)
}
