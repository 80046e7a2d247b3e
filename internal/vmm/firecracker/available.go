package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MinVersion is the oldest Firecracker banger drives. Every request it sends
// is valid against the 1.4 API and later.
var MinVersion = [3]int{1, 4, 0}

// Probe reports whether Firecracker can run here: nil when binary is found
// (exec.LookPath), /dev/kvm opens read-write and `binary --version` reports
// a version >= MinVersion. Otherwise the error lists every missing piece.
func Probe(binary string) error {
	return probe(binary, "/dev/kvm")
}

func probe(binary, kvmPath string) error {
	var problems []error
	path, err := exec.LookPath(binary)
	if err != nil {
		problems = append(problems, fmt.Errorf("firecracker binary %q not found: %w", binary, err))
	} else if v, raw, err := binaryVersion(path); err != nil {
		problems = append(problems, err)
	} else if less(v, MinVersion) {
		problems = append(problems, fmt.Errorf("%s is %s; banger needs firecracker >= %d.%d.%d", path, raw, MinVersion[0], MinVersion[1], MinVersion[2]))
	}
	if f, err := os.OpenFile(kvmPath, os.O_RDWR, 0); err != nil {
		problems = append(problems, fmt.Errorf("cannot open %s read-write (KVM missing, or no permission: kvm group?): %w", kvmPath, err))
	} else {
		f.Close()
	}
	return errors.Join(problems...)
}

// versionRE matches the first line of `firecracker --version`, e.g.
// "Firecracker v1.7.0" (later lines list snapshot format versions).
var versionRE = regexp.MustCompile(`(?m)^Firecracker v(\d+)\.(\d+)\.(\d+)\S*`)

// binaryVersion runs `path --version` and parses its answer.
func binaryVersion(path string) (v [3]int, raw string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return v, "", fmt.Errorf("%s --version: %w", path, err)
	}
	return parseVersion(string(out))
}

func parseVersion(out string) (v [3]int, raw string, err error) {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		return v, "", fmt.Errorf("cannot find a firecracker version in --version output %q", first)
	}
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, strings.TrimPrefix(m[0], "Firecracker "), nil
}

func less(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}
