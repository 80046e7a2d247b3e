package cli

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestHumanBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0B"},
		{1, "1B"},
		{1023, "1023B"},
		{1024, "1.0KiB"},
		{1536, "1.5KiB"},
		{1<<20 - 1, "1024.0KiB"}, // rounds up in the display, stays in KiB
		{1 << 20, "1.0MiB"},
		{512 << 20, "512.0MiB"},
		{1 << 30, "1.0GiB"},
		{4 << 30, "4.0GiB"},
		{3 << 39, "1.5TiB"},
		{1 << 50, "1.0PiB"},
		{1 << 60, "1.0EiB"},
		{math.MaxInt64, "8.0EiB"},
	} {
		if got := humanBytes(tc.n); got != tc.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestAgo(t *testing.T) {
	if got := ago(time.Time{}); got != "-" {
		t.Errorf("ago(zero) = %q, want -", got)
	}
	for _, tc := range []struct {
		age  time.Duration
		want string
	}{
		{5 * time.Second, "5s ago"},
		{59 * time.Second, "59s ago"},
		{90 * time.Second, "1m ago"},
		{59*time.Minute + 10*time.Second, "59m ago"},
		{3*time.Hour + 5*time.Minute, "3h ago"},
		{47 * time.Hour, "47h ago"},
		{73 * time.Hour, "3d ago"},
		{400 * 24 * time.Hour, "400d ago"},
	} {
		// time.Now right before the call, so only nanoseconds pass.
		if got := ago(time.Now().Add(-tc.age)); got != tc.want {
			t.Errorf("ago(now-%v) = %q, want %q", tc.age, got, tc.want)
		}
	}
}

func TestTableAlignsColumns(t *testing.T) {
	var buf bytes.Buffer
	tb := newTable(&buf)
	tb.row("NAME", "STATE", "IP")
	tb.row("dev", "running", "10.213.0.2")
	tb.row("a-much-longer-name", "stopped", "-")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"NAME                STATE    IP\n" +
		"dev                 running  10.213.0.2\n" +
		"a-much-longer-name  stopped  -\n"
	if got := buf.String(); got != want {
		t.Errorf("table output:\n%q\nwant\n%q", got, want)
	}
}

func TestLastDaemonError(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, log, want string
	}{
		{"last of several", "bangerd: first\nnoise\nbangerd: config.toml: unknown key vm.vcpus\ntime=... level=INFO\n",
			"config.toml: unknown key vm.vcpus"},
		{"trailing newlines", "bangerd: only one\n\n\n", "only one"},
		{"no trailing newline", "x\nbangerd: at end", "at end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := lastDaemonError(write(tc.name, tc.log)); got != tc.want {
				t.Errorf("lastDaemonError = %q, want %q", got, tc.want)
			}
		})
	}
	// Without such a line, or without a log, it points at the log.
	noLine := write("none", "level=INFO msg=started\n")
	if got, want := lastDaemonError(noLine), "see "+noLine; got != want {
		t.Errorf("lastDaemonError(no bangerd line) = %q, want %q", got, want)
	}
	missing := filepath.Join(dir, "missing.log")
	if got, want := lastDaemonError(missing), "see "+missing; got != want {
		t.Errorf("lastDaemonError(missing) = %q, want %q", got, want)
	}
}

func TestExitError(t *testing.T) {
	if got := (ExitError{Code: 42}).Error(); got != "exit status 42" {
		t.Errorf("ExitError{42}.Error() = %q", got)
	}
}
