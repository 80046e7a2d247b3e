package qemu

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestChooseAccelForced(t *testing.T) {
	for _, accel := range []string{"tcg", "kvm"} {
		d := New(Options{Accel: accel, ProbeKernel: func() string {
			t.Errorf("accel %q probed a kernel", accel)
			return ""
		}})
		got, why := d.Accel()
		if got != accel {
			t.Errorf("Accel() with accel=%q = %q", accel, got)
		}
		if !strings.Contains(why, `qemu.accel = "`+accel+`"`) {
			t.Errorf("Accel() reason %q does not point at the config", why)
		}
	}
}

// Auto mode without a kernel to probe with never claims KVM, and says why.
func TestChooseAccelAutoWithoutProbeKernel(t *testing.T) {
	for _, pk := range []func() string{nil, func() string { return "" }} {
		d := New(Options{Accel: "auto", ProbeKernel: pk})
		got, why := d.Accel()
		if got != "tcg" {
			t.Errorf("Accel() = %q (%s), want tcg", got, why)
		}
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
			if !strings.Contains(why, "KVM unavailable") {
				t.Errorf("reason %q, want KVM unavailable (/dev/kvm: %v)", why, err)
			}
		} else {
			f.Close()
			if !strings.Contains(why, "no kernel is registered") {
				t.Errorf("reason %q, want the missing probe kernel", why)
			}
		}
	}
}

// fakeKernel creates a file standing in for a kernel image.
func fakeKernel(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("bangertest kernel "+name), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestProbeCacheRoundTrip(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "cache") // created on first save
	kernel := fakeKernel(t, t.TempDir(), "vmlinuz")
	want := accelChoice{"tcg", "bangertest verdict"}

	New(Options{CacheDir: cache}).saveProbe(kernel, want)

	file := filepath.Join(cache, "kvm-probe.json")
	st, err := os.Stat(file)
	if err != nil {
		t.Fatalf("saveProbe wrote no cache file: %v", err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("cache file mode %o, want 600", perm)
	}
	b, _ := os.ReadFile(file)
	var rec probeRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("cache file %q: %v", b, err)
	}
	kst, _ := os.Stat(kernel)
	if rec.Kernel != kernel || rec.Accel != "tcg" || rec.Reason != "bangertest verdict" || !rec.ModTime.Equal(kst.ModTime()) {
		t.Errorf("cache record %+v does not describe %s (mtime %v)", rec, kernel, kst.ModTime())
	}

	// A fresh driver (a daemon restart) reads it back.
	got, ok := New(Options{CacheDir: cache}).cachedProbe(kernel)
	if !ok || got.accel != "tcg" || got.reason != "bangertest verdict (cached probe)" {
		t.Errorf("cachedProbe = %+v, %v; want the saved verdict marked as cached", got, ok)
	}
}

func TestProbeCacheInvalidation(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	kernel := fakeKernel(t, dir, "vmlinuz")
	New(Options{CacheDir: cache}).saveProbe(kernel, accelChoice{"kvm", "bangertest ok"})

	miss := func(t *testing.T, kernel string) {
		t.Helper()
		if got, ok := New(Options{CacheDir: cache}).cachedProbe(kernel); ok {
			t.Errorf("cachedProbe(%s) = %+v, want a miss", kernel, got)
		}
	}
	t.Run("other kernel", func(t *testing.T) {
		miss(t, fakeKernel(t, dir, "vmlinuz-other"))
	})
	t.Run("kernel missing", func(t *testing.T) {
		miss(t, filepath.Join(dir, "gone"))
	})
	t.Run("no cache dir configured", func(t *testing.T) {
		if got, ok := New(Options{}).cachedProbe(kernel); ok {
			t.Errorf("cachedProbe without CacheDir = %+v, want a miss", got)
		}
	})
	t.Run("kernel replaced", func(t *testing.T) {
		later := time.Now().Add(time.Hour)
		if err := os.Chtimes(kernel, later, later); err != nil {
			t.Fatal(err)
		}
		miss(t, kernel)
	})
	t.Run("corrupt file", func(t *testing.T) {
		k := fakeKernel(t, dir, "vmlinuz-2")
		New(Options{CacheDir: cache}).saveProbe(k, accelChoice{"kvm", "bangertest ok"})
		if _, ok := New(Options{CacheDir: cache}).cachedProbe(k); !ok {
			t.Fatal("fresh record not used")
		}
		if err := os.WriteFile(filepath.Join(cache, "kvm-probe.json"), []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		miss(t, k)
	})
}

// Without a cache directory the verdict is still kept in memory.
func TestProbeCacheInMemory(t *testing.T) {
	kernel := fakeKernel(t, t.TempDir(), "vmlinuz")
	d := New(Options{})
	d.saveProbe(kernel, accelChoice{"tcg", "bangertest"})
	if got, ok := d.cachedProbe(kernel); !ok || got.accel != "tcg" {
		t.Errorf("cachedProbe after saveProbe on the same driver = %+v, %v", got, ok)
	}
}

// In auto mode with /dev/kvm present, a cached verdict is used without
// booting anything. The binary is bogus, so a probe would report a failure.
func TestChooseAccelUsesCache(t *testing.T) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("/dev/kvm does not open (%v): auto mode never reaches the cache", err)
	}
	f.Close()
	dir := t.TempDir()
	kernel := fakeKernel(t, dir, "vmlinuz")
	cache := filepath.Join(dir, "cache")
	New(Options{CacheDir: cache}).saveProbe(kernel, accelChoice{"kvm", "bangertest cached verdict"})

	d := New(Options{Accel: "auto", Binary: filepath.Join(dir, "no-such-qemu"), CacheDir: cache,
		ProbeKernel: func() string { return kernel }})
	got, why := d.Accel()
	if got != "kvm" || why != "bangertest cached verdict (cached probe)" {
		t.Errorf("Accel() = %q, %q; want the cached verdict", got, why)
	}
}

// probeKVM classifies what the probe boot printed. A stand-in script plays
// QEMU here; the real KVM boot is not needed for the classification.
func TestProbeKVMClassifiesOutput(t *testing.T) {
	dir := t.TempDir()
	kernel := fakeKernel(t, dir, "vmlinuz")
	for _, tc := range []struct {
		name, script, accel, reason string
	}{
		{"kernel panic", "echo '[    0.9] Kernel panic - not syncing: VFS: Unable to mount root fs'; exit 0",
			"kvm", "KVM boot probe reached the guest kernel"},
		{"vfs only", "echo 'VFS: Unable to mount root fs on unknown-block(0,0)'; exit 1",
			"kvm", "reached the guest kernel"},
		{"qemu error", "echo 'qemu-system-x86_64: failed to initialize kvm: Operation not permitted' >&2; echo second line >&2; exit 1",
			"tcg", "qemu failed: qemu-system-x86_64: failed to initialize kvm: Operation not permitted); using TCG"},
		{"silent success", "exit 0", "tcg", "does not boot under it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := filepath.Join(dir, "bangertest-qemu-"+strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+tc.script+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			c := New(Options{Binary: bin}).probeKVM(kernel)
			if c.accel != tc.accel || !strings.Contains(c.reason, tc.reason) {
				t.Errorf("probeKVM = %+v, want %s with %q", c, tc.accel, tc.reason)
			}
		})
	}
}

func TestFirstLine(t *testing.T) {
	for in, want := range map[string]string{
		"":                    "",
		"one":                 "one",
		"\n\n  first\nsecond": "first",
		"a\r\nb":              "a\r",
	} {
		if got := firstLine(in); got != want {
			t.Errorf("firstLine(%q) = %q, want %q", in, got, want)
		}
	}
}
