package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
)

const registerHint = "banger image register --name default --rootfs FILE --kernel FILE [--initrd FILE]"

// probeKernel is the kernel the daemon's QEMU driver would probe KVM with:
// the first registered image's (see daemon.probeKernel).
func (e Env) probeKernel() string {
	si := e.stateFacts()
	if si.err != nil || len(si.images) == 0 {
		return ""
	}
	return si.images[0].Kernel
}

// probeCached reports whether the QEMU driver's probe cache in cacheDir
// holds a verdict for kernel (same path and modification time), so the
// driver can answer from it without booting or writing anything.
// It mirrors the record of internal/vmm/qemu (accel.go).
func probeCached(cacheDir, kernel string) bool {
	st, err := os.Stat(kernel)
	if err != nil || cacheDir == "" {
		return false
	}
	b, err := os.ReadFile(filepath.Join(cacheDir, "kvm-probe.json"))
	if err != nil {
		return false
	}
	var r struct {
		Kernel  string    `json:"kernel"`
		ModTime time.Time `json:"mod_time"`
		Accel   string    `json:"accel"`
	}
	return json.Unmarshal(b, &r) == nil && r.Kernel == kernel && r.ModTime.Equal(st.ModTime()) && r.Accel != ""
}

// accel asks the QEMU driver, built as the daemon builds it, which
// accelerator it would use. The driver's cache is used only when it already
// holds this kernel's verdict: otherwise the driver probes without a cache
// directory, so nothing is written. The probe boots for at most 8 s and does
// not take a context; ctx only bounds the wait.
func (e Env) accel(ctx context.Context, qemuBin, mode string) (accel, reason string, err error) {
	kernel := e.probeKernel()
	cacheDir := ""
	if kernel != "" && probeCached(e.Layout.CacheDir, kernel) {
		cacheDir = e.Layout.CacheDir
	}
	d := qemu.New(qemu.Options{Binary: qemuBin, Accel: mode, CacheDir: cacheDir,
		ProbeKernel: func() string { return kernel }})
	type verdict struct{ accel, reason string }
	ch := make(chan verdict, 1)
	go func() {
		a, r := d.Accel()
		ch <- verdict{a, r}
	}()
	select {
	case v := <-ch:
		return v.accel, v.reason, nil
	case <-ctx.Done():
		return "", "", fmt.Errorf("the KVM probe did not answer in time: %w", ctx.Err())
	}
}

// checkAccel: which accelerator QEMU will use, with the driver's own KVM
// boot probe of a stock kernel.
func checkAccel(ctx context.Context, env Env) Result {
	cfg := env.cfg()
	qemuBin, err := env.lookPath(cfg.QEMU.Binary)
	if err != nil {
		return warn(fmt.Sprintf("cannot probe: %s not found in PATH", cfg.QEMU.Binary), apt+"qemu-system-x86")
	}
	kvmErr := openDev("/dev/kvm")
	kvmRemedy := "expose /dev/kvm: enable virtualization (VT-x/AMD-V, or nested virtualization for a VM host) and load kvm_intel or kvm_amd"
	if errors.Is(kvmErr, fs.ErrPermission) {
		kvmRemedy = "give the user running bangerd read-write access to /dev/kvm (usermod -aG kvm USER, then log in again)"
	}
	switch cfg.QEMU.Accel {
	case "tcg":
		ev := "QEMU will use tcg: qemu.accel = \"tcg\" in config (software emulation, slow)"
		if kvmErr == nil {
			return warn(ev, fmt.Sprintf("set qemu.accel = \"auto\" in %s to use KVM when a probe boot succeeds", env.ConfigPath))
		}
		return warn(ev+fmt.Sprintf("; KVM is unavailable anyway (%v)", kvmErr), kvmRemedy)
	case "kvm":
		if kvmErr != nil {
			return fail(fmt.Sprintf("qemu.accel = \"kvm\" in config but KVM is unavailable (%v)", kvmErr),
				fmt.Sprintf("set qemu.accel = \"auto\" in %s, or %s", env.ConfigPath, kvmRemedy))
		}
		if env.probeKernel() == "" {
			return warn("QEMU will use kvm (qemu.accel = \"kvm\" in config); not verified: no image is registered to probe KVM with",
				"register an image so doctor can probe KVM: "+registerHint)
		}
		a, why, err := env.accel(ctx, qemuBin, "auto")
		if err != nil {
			return warn("QEMU will use kvm (qemu.accel = \"kvm\" in config); not verified: "+err.Error(),
				"re-run `banger doctor`")
		}
		if a != "kvm" {
			return fail("qemu.accel = \"kvm\" in config but "+why,
				fmt.Sprintf("set qemu.accel = \"auto\" (or \"tcg\") in %s", env.ConfigPath))
		}
		return pass("QEMU will use kvm (qemu.accel = \"kvm\" in config); " + why)
	}
	a, why, err := env.accel(ctx, qemuBin, "auto")
	if err != nil {
		return warn(err.Error(), "re-run `banger doctor`")
	}
	ev := "QEMU will use " + a + ": " + why
	if a == "kvm" {
		return pass(ev)
	}
	switch {
	case kvmErr != nil:
		return warn(ev, kvmRemedy)
	case env.probeKernel() == "":
		return warn(ev, "none needed now: the probe runs once the first image exists (vm create gets the default image and its kernel on first use; or banger kernel pull)")
	case strings.Contains(why, "does not boot"):
		return warn(ev, fmt.Sprintf("nothing to fix on this host (its KVM cannot run a stock kernel, e.g. PVM); "+
			"set qemu.accel = \"tcg\" in %s to skip the probe", env.ConfigPath))
	}
	return warn(ev, fmt.Sprintf("set qemu.accel = \"tcg\" in %s to skip the probe", env.ConfigPath))
}

const fcRelease = "install firecracker and jailer >= v1.4.0 from https://github.com/firecracker-microvm/firecracker/releases into PATH"

// checkFirecracker: Firecracker and its jailer are optional; QEMU is used
// without them.
func checkFirecracker(ctx context.Context, env Env) Result {
	cfg := env.cfg()
	required := cfg.VMM == "firecracker"
	p, err := env.lookPath(cfg.Firecracker.Binary)
	if err != nil {
		if required {
			return fail(fmt.Sprintf("vmm = \"firecracker\" in config but %s is not found in PATH", cfg.Firecracker.Binary),
				fcRelease+fmt.Sprintf(", or set vmm = \"auto\" in %s", env.ConfigPath))
		}
		return warn(fmt.Sprintf("Firecracker not installed (%s not found in PATH); banger uses QEMU", cfg.Firecracker.Binary),
			"none needed; for Firecracker (needs a KVM that boots stock kernels): "+fcRelease)
	}
	v, err := version(ctx, p, "--version")
	if err != nil {
		return warn(err.Error(), fcRelease)
	}
	ev := fmt.Sprintf("%s (%s)", v, p)
	jailer := cfg.Firecracker.Jailer
	if jailer == "" {
		jailer = "jailer"
	}
	if jp, err := env.lookPath(jailer); err != nil {
		if cfg.Firecracker.Jailer != "" {
			return warn(ev+fmt.Sprintf("; firecracker.jailer = %q is not found", cfg.Firecracker.Jailer),
				fmt.Sprintf("install the jailer at %s, or set firecracker.jailer = \"\" in %s", cfg.Firecracker.Jailer, env.ConfigPath))
		}
		ev += "; jailer not installed (optional)"
	} else if jv, err := version(ctx, jp, "--version"); err == nil {
		ev += fmt.Sprintf("; %s (%s)", jv, jp)
	} else {
		ev += "; jailer at " + jp + " (" + err.Error() + ")"
	}
	if err := firecracker.Probe(p); err != nil {
		if required {
			return fail(ev+": "+err.Error(), fcRelease+fmt.Sprintf(", or set vmm = \"auto\" in %s", env.ConfigPath))
		}
		return warn(ev+": unusable, banger uses QEMU: "+err.Error(), fcRelease)
	}
	return pass(ev)
}

// checkVMM: the driver the daemon chooses (daemon.chooseDriver's rules).
func checkVMM(_ context.Context, env Env) Result {
	cfg := env.cfg()
	fcErr := func() error {
		p, err := env.lookPath(cfg.Firecracker.Binary)
		if err != nil {
			return fmt.Errorf("firecracker not installed")
		}
		return firecracker.Probe(p)
	}
	_, qErr := env.lookPath(cfg.QEMU.Binary)
	switch cfg.VMM {
	case "qemu":
		if qErr != nil {
			return fail(fmt.Sprintf("vmm = \"qemu\" in config but %s is not found in PATH", cfg.QEMU.Binary), apt+"qemu-system-x86")
		}
		return pass("qemu (vmm = \"qemu\" in config)")
	case "firecracker":
		if err := fcErr(); err != nil {
			return fail("vmm = \"firecracker\" in config but it is unusable: "+err.Error(),
				fcRelease+fmt.Sprintf(", or set vmm = \"auto\" in %s", env.ConfigPath))
		}
		return pass("firecracker (vmm = \"firecracker\" in config)")
	}
	fe := fcErr()
	if fe == nil {
		return pass("firecracker (auto: firecracker binary and a usable KVM were found)")
	}
	if qErr != nil {
		return fail(fmt.Sprintf("no usable VMM: firecracker: %v; qemu: %s not found in PATH", fe, cfg.QEMU.Binary), apt+"qemu-system-x86")
	}
	return pass("qemu (auto: " + oneLine(fe.Error()) + ")")
}
