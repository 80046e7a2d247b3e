package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// verifyNoLeaks checks, after cleanup, that nothing of the run is left: no
// live process whose command line mentions the run's directory (every
// bangerd, banger and QEMU of the run does), not the run's namespace, no
// loop device or mount under the directory, not the directory itself.
// Processes found are reported and then killed by pid; they are the run's
// own, since only they carry its random directory name.
func (b *bench) verifyNoLeaks() error {
	var leaks []string
	for _, p := range processesMentioning(b.dir) {
		leaks = append(leaks, "process "+p)
		pid := atoi(strings.Fields(p)[0])
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitGone(context.Background(), pid, 10*time.Second)
	}
	for _, name := range namespaces() {
		switch {
		case b.ns.name != "" && name == b.ns.name:
			leaks = append(leaks, "network namespace "+name)
		case strings.HasPrefix(name, netnsPrefix):
			logf("warning: network namespace %s is not this run's (another run, or left by an earlier one)", name)
		}
	}
	if out, _ := exec.Command("losetup", "-a").Output(); bytes.Contains(out, []byte(b.dir)) {
		leaks = append(leaks, "loop device on a file under "+b.dir)
	}
	if m, _ := os.ReadFile("/proc/self/mounts"); bytes.Contains(m, []byte(b.dir)) {
		leaks = append(leaks, "mount under "+b.dir)
	}
	if _, err := os.Stat(b.dir); err == nil {
		leaks = append(leaks, "directory "+b.dir)
		_ = os.RemoveAll(b.dir) // again, now that its processes are gone
	}
	if len(leaks) == 0 {
		return nil
	}
	return errors.New("the run left behind:\n  " + strings.Join(leaks, "\n  ") +
		"\n(processes listed were killed, the directory removed again; check the rest by hand)")
}
