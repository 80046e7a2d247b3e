package bootinit

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// logf prints a line on the console (stdout is /dev/console once Run started).
func logf(format string, a ...any) {
	fmt.Fprintf(os.Stdout, "banger-init: "+format+"\n", a...)
}

// mount mounts fstype on target (created if missing).
func mount(source, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", source, fstype, target, err)
	}
	return nil
}

// useConsole makes /dev/console stdin, stdout and stderr.
func useConsole() {
	f, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
	if err != nil {
		return // keep what the kernel gave us
	}
	for fd := 0; fd <= 2; fd++ {
		unix.Dup2(int(f.Fd()), fd)
	}
	f.Close()
}

// loadModules loads the modules listed (one path relative to moddir a
// line, dependencies first) in listFile with finit_module. A module that
// fails is reported and skipped, as insmod in a shell loop would be; one
// already loaded (EEXIST) is fine.
func loadModules(listFile, moddir string) (loaded int, err error) {
	f, err := os.Open(listFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rel := strings.TrimSpace(sc.Text())
		if rel == "" || strings.HasPrefix(rel, "#") {
			continue
		}
		if err := loadModule(filepath.Join(moddir, rel)); err != nil {
			logf("warning: could not load %s: %v", rel, err)
			continue
		}
		loaded++
	}
	return loaded, sc.Err()
}

func loadModule(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.FinitModule(fd, "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// waitDevice returns the block device node for spec (/dev/..., UUID=,
// LABEL=) once it exists, polling every 50 ms until timeout.
func waitDevice(spec string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		dev, err := findDevice(spec)
		if err == nil {
			return dev, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s did not appear within %s (block devices: %s)", spec, timeout, blockDevices())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func findDevice(spec string) (string, error) {
	switch {
	case strings.HasPrefix(spec, "UUID="), strings.HasPrefix(spec, "LABEL="):
		return findFS(spec)
	default:
		var st unix.Stat_t
		if err := unix.Stat(spec, &st); err != nil {
			return "", err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return "", fmt.Errorf("%s is not a block device", spec)
		}
		return spec, nil
	}
}

func blockDevices() string {
	ents, _ := os.ReadDir("/sys/class/block")
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, " ")
}

// powerOff syncs and powers the machine off; if that is impossible it
// reboots (QEMU's -no-reboot makes that an exit too), else it sleeps forever.
func powerOff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	logf("power off failed (%v); rebooting", err)
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	for {
		time.Sleep(time.Hour)
	}
}

// fatal reports a fatal error and powers off, unmounting what it can.
func fatal(unmount []string, format string, a ...any) {
	logf("FATAL: "+format, a...)
	logf("powering off")
	for i := len(unmount) - 1; i >= 0; i-- {
		unix.Unmount(unmount[i], 0)
	}
	time.Sleep(time.Second) // let the console drain
	powerOff()
}
