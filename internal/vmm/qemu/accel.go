package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

type accelChoice struct {
	accel, reason string
}

// probeMu serialises KVM probes and guards Driver.probed.
var probeMu sync.Mutex

// chooseAccel resolves the configured accelerator. In auto mode KVM is used
// only when /dev/kvm opens AND a real boot probe of a stock kernel under KVM
// reaches the kernel's own messages; the verdict is cached per kernel.
func (d *Driver) chooseAccel() accelChoice {
	switch d.o.Accel {
	case "tcg":
		return accelChoice{"tcg", "qemu.accel = \"tcg\" in config"}
	case "kvm":
		return accelChoice{"kvm", "qemu.accel = \"kvm\" in config"}
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return accelChoice{"tcg", fmt.Sprintf("KVM unavailable (%v); using TCG software emulation", err)}
	}
	f.Close()
	kernel := ""
	if d.o.ProbeKernel != nil {
		kernel = d.o.ProbeKernel()
	}
	if kernel == "" {
		return accelChoice{"tcg", "/dev/kvm exists but no kernel is registered to probe it with; using TCG"}
	}
	probeMu.Lock()
	defer probeMu.Unlock()
	if c, ok := d.cachedProbe(kernel); ok {
		return c
	}
	c := d.probeKVM(kernel)
	d.saveProbe(kernel, c)
	return c
}

func (d *Driver) probeCacheFile() string {
	if d.o.CacheDir == "" {
		return ""
	}
	return filepath.Join(d.o.CacheDir, "kvm-probe.json")
}

type probeRecord struct {
	Kernel  string    `json:"kernel"`
	ModTime time.Time `json:"mod_time"`
	Accel   string    `json:"accel"`
	Reason  string    `json:"reason"`
}

// cachedProbe returns the verdict recorded for this kernel (same path and
// modification time), from memory or from the cache file. Caller holds probeMu.
func (d *Driver) cachedProbe(kernel string) (accelChoice, bool) {
	st, err := os.Stat(kernel)
	if err != nil {
		return accelChoice{}, false
	}
	matches := func(r probeRecord) bool { return r.Kernel == kernel && r.ModTime.Equal(st.ModTime()) }
	if matches(d.probed) {
		return accelChoice{d.probed.Accel, d.probed.Reason}, true
	}
	p := d.probeCacheFile()
	if p == "" {
		return accelChoice{}, false
	}
	var r probeRecord
	b, err := os.ReadFile(p)
	if err != nil || json.Unmarshal(b, &r) != nil || !matches(r) {
		return accelChoice{}, false
	}
	r.Reason += " (cached probe)"
	d.probed = r
	return accelChoice{r.Accel, r.Reason}, true
}

// saveProbe records a verdict in memory and in the cache file. Caller holds probeMu.
func (d *Driver) saveProbe(kernel string, c accelChoice) {
	st, err := os.Stat(kernel)
	if err != nil {
		return
	}
	d.probed = probeRecord{Kernel: kernel, ModTime: st.ModTime(), Accel: c.accel, Reason: c.reason}
	p := d.probeCacheFile()
	if p == "" {
		return
	}
	b, _ := json.Marshal(d.probed)
	_ = os.MkdirAll(filepath.Dir(p), 0o700)
	_ = os.WriteFile(p, b, 0o600)
}

// probeKVM boots kernel under KVM with no root and no initrd: a working KVM
// reaches "Kernel panic" (no root) within seconds; a broken one hangs early
// or makes QEMU fail.
func (d *Driver) probeKVM(kernel string) accelChoice {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.o.Binary, "-M", "microvm", "-accel", "kvm", "-cpu", "max", "-m", "256",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	s := out.String()
	if strings.Contains(s, "Kernel panic") || strings.Contains(s, "VFS: Unable to mount root") {
		return accelChoice{"kvm", "KVM boot probe reached the guest kernel"}
	}
	why := "hung in early boot"
	if ctx.Err() == nil && err != nil {
		why = "qemu failed: " + firstLine(s)
	}
	return accelChoice{"tcg", "/dev/kvm is present but a stock kernel does not boot under it (" + why + "); using TCG software emulation"}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
