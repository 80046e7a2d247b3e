// Package nsleak is the leak check that test packages creating named network
// namespaces run after their tests: each package names its namespaces with
// its own prefix (packages may test in parallel) and fails the run if any of
// them is left in /run/netns.
package nsleak

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
)

// Dir is where named network namespaces are bind-mounted (`ip netns`).
const Dir = "/run/netns"

// Main runs the tests, then fails the run if a namespace named with prefix
// remains. Call it from TestMain.
func Main(m *testing.M, prefix string) {
	code := m.Run()
	if left := Left(prefix); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: network namespaces left behind: %s (remove with `ip netns del NAME`)\n",
			strings.Join(left, " "))
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// Left lists the named namespaces starting with prefix.
func Left(prefix string) []string {
	entries, err := os.ReadDir(Dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}
