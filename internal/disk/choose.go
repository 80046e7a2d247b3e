package disk

import (
	"fmt"
	"sort"
	"strings"
)

// Backends returns every root backend by name.
func Backends() map[string]Backend {
	return map[string]Backend{
		"qcow2":   qcow2Backend{},
		"reflink": reflinkBackend{},
		"dm":      dmBackend{},
		"copy":    copyBackend{},
	}
}

// autoOrder is the preference of "auto" per VMM driver. Firecracker opens
// only raw disks, so it never gets qcow2.
var autoOrder = map[string][]string{
	"qemu":        {"reflink", "qcow2", "copy"},
	"firecracker": {"dm", "reflink", "copy"},
}

var why = map[string]string{
	"reflink": "reflink clones share blocks with the image and cost nothing to create",
	"qcow2":   "a qcow2 overlay stores only the VM's changes",
	"dm":      "a device-mapper snapshot stores only the VM's changes in a sparse file",
	"copy":    "a sparse copy works on any filesystem but duplicates the image's data",
}

// Choose returns the root backend for name ("", "auto" or a backend name),
// the VMM driver ("qemu" or "firecracker") and the directory that will hold
// the roots, with a one-line reason for the pick (shown by vm show/doctor).
func Choose(name, vmmDriver, dir string) (Backend, string, error) {
	order, ok := autoOrder[vmmDriver]
	if !ok {
		return nil, "", fmt.Errorf("unknown VMM driver %q: want qemu or firecracker", vmmDriver)
	}
	all := Backends()
	if name == "" || name == "auto" {
		var skipped []string
		for _, n := range order {
			b := all[n]
			if err := b.Available(dir); err != nil {
				skipped = append(skipped, fmt.Sprintf("%s: %v", n, err))
				continue
			}
			reason := fmt.Sprintf("auto for %s: %s", vmmDriver, why[n])
			if len(skipped) > 0 {
				reason += " (skipped " + strings.Join(skipped, "; ") + ")"
			}
			return b, reason, nil
		}
		return nil, "", fmt.Errorf("no root disk backend works for %s in %s: %s", vmmDriver, dir, strings.Join(skipped, "; "))
	}
	b, ok := all[name]
	if !ok {
		return nil, "", fmt.Errorf("unknown root disk backend %q: want auto, %s", name, strings.Join(names(all), ", "))
	}
	if !compatible(name, vmmDriver) {
		return nil, "", fmt.Errorf("root disk backend %q does not work with %s (%s opens raw disks only): choose %s",
			name, vmmDriver, vmmDriver, alternatives(order, dir, name))
	}
	if err := b.Available(dir); err != nil {
		return nil, "", fmt.Errorf("root disk backend %q is unavailable: %w; choose %s", name, err, alternatives(order, dir, name))
	}
	return b, fmt.Sprintf("configured (disk.backend = %q): %s", name, why[name]), nil
}

func compatible(backend, vmmDriver string) bool {
	for _, n := range autoOrder[vmmDriver] {
		if n == backend {
			return true
		}
	}
	return false
}

// alternatives lists what would work instead of not, e.g. `"auto" (or "reflink", "copy")`.
func alternatives(order []string, dir, not string) string {
	var ok []string
	for _, n := range order {
		if n != not && Backends()[n].Available(dir) == nil {
			ok = append(ok, fmt.Sprintf("%q", n))
		}
	}
	if len(ok) == 0 {
		return `"auto"`
	}
	return `"auto" (or ` + strings.Join(ok, ", ") + ")"
}

func names(m map[string]Backend) []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
