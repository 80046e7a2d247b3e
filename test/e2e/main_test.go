// Package e2e boots real guests through the real daemon and CLI.
//
// The suite needs root, QEMU and the test guest built by
// test/fixture/build-guest.sh (cached under /var/cache/banger-test). It runs
// only with BANGER_E2E=1 and says so otherwise. Every scenario gets its own
// network namespace (bgt-*) and its own banger home, so the daemon, its
// bridge, taps and guests never touch the host's network. TestMain checks at
// the end that nothing the suite made is left: processes, namespaces, loop
// devices, mounts, links.
package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var (
	binDir   string // banger + bangerd built for this run
	guestDir string // fixture: rootfs.ext4, vmlinuz, modules/RELEASE, kernel-release
	testRoot string // every file the suite makes lives under here
)

func TestMain(m *testing.M) {
	if os.Getenv("BANGER_E2E") != "1" {
		fmt.Println("e2e: not run (set BANGER_E2E=1; needs root, qemu-system-x86 and the test guest fixture)")
		os.Exit(0)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: must run as root (taps, bridges, network namespaces)")
		return 1
	}
	var err error
	testRoot, err = os.MkdirTemp("", "bangertest-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(testRoot)
	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binDir = filepath.Join(testRoot, "bin")
	build := exec.Command("go", "build", "-o", binDir+"/", "./cmd/banger", "./cmd/bangerd", "./cmd/bangerd-root", "./test/e2e/helperclient")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build: %v\n%s", err, out)
		return 1
	}
	// The guest agent and banger-init run in guests: static, next to bangerd, which finds them there.
	build = exec.Command("go", "build", "-o", binDir+"/", "./cmd/banger-agent", "./cmd/banger-init")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build banger-agent: %v\n%s", err, out)
		return 1
	}
	if guestDir, err = fixture(root); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	baseline := hostLinks()
	code := m.Run()
	if leaks := findLeaks(baseline); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: LEAK CHECK FAILED: the suite left host resources behind:\n  %s\n", strings.Join(leaks, "\n  "))
		return 1
	}
	fmt.Println("e2e: leak check passed (no process, netns, loop device, mount or link of the suite remains)")
	return code
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// fixture builds (or finds cached) the test guest and returns its directory.
func fixture(root string) (string, error) {
	if d := os.Getenv("BANGER_TEST_GUEST"); d != "" {
		return d, nil
	}
	cmd := exec.Command("bash", filepath.Join(root, "test/fixture/build-guest.sh"))
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build-guest.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	return lines[len(lines)-1], nil
}

// hostLinks lists the links of the host's own network namespace.
func hostLinks() map[string]bool {
	out, _ := exec.Command("ip", "-o", "link", "show").Output()
	links := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			links[strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")] = true
		}
	}
	return links
}

// findLeaks reports anything of the suite's still on the host.
func findLeaks(baseline map[string]bool) []string {
	var leaks []string
	for _, p := range processesMentioning(testRoot) {
		leaks = append(leaks, "process "+p)
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); len(out) > 0 {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, nsPrefix) {
				leaks = append(leaks, "network namespace "+strings.Fields(line)[0])
			}
		}
	}
	if out, _ := exec.Command("losetup", "-a").Output(); bytes.Contains(out, []byte(testRoot)) {
		leaks = append(leaks, "loop devices: "+string(out))
	}
	if b, _ := os.ReadFile("/proc/self/mounts"); bytes.Contains(b, []byte(testRoot)) {
		leaks = append(leaks, "mounts under "+testRoot)
	}
	for l := range hostLinks() {
		if !baseline[l] {
			leaks = append(leaks, "host link "+l)
		}
	}
	return leaks
}

// processesMentioning returns "pid argv" for processes whose command line
// contains s (our VMMs and daemons all carry the suite's paths).
func processesMentioning(s string) []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err != nil || !bytes.Contains(b, []byte(s)) {
			continue
		}
		if n, _ := strconv.Atoi(pid); exited(n) {
			continue // a zombie whose threads are all gone holds no resources
		}
		found = append(found, pid+" "+strings.ReplaceAll(string(b), "\x00", " "))
	}
	return found
}
