package dnsserver

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// table holds the VM records: name → address and address → names. It is
// safe for concurrent use; lookups take a read lock only.
type table struct {
	mu     sync.RWMutex
	byName map[string]netip.Addr
	byAddr map[netip.Addr][]string // names sorted, never empty
	serial uint32                  // bumped on every change (the SOA serial)
}

func newTable() *table {
	return &table{byName: map[string]netip.Addr{}, byAddr: map[netip.Addr][]string{}, serial: 1}
}

// normalizeName checks that name is one DNS label (1-63 characters of
// [a-zA-Z0-9-], no leading or trailing '-') and returns it lowercased.
func normalizeName(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty name")
	}
	if len(name) > 63 {
		return "", fmt.Errorf("name %q: longer than 63 characters", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-':
			if i == 0 || i == len(name)-1 {
				return "", fmt.Errorf("name %q: a DNS label cannot start or end with '-'", name)
			}
		default:
			return "", fmt.Errorf("name %q: a DNS label has only letters, digits and '-' (%q is not allowed)", name, c)
		}
	}
	return strings.ToLower(name), nil
}

// normalizeAddr returns ip without an IPv4-in-IPv6 mapping and without a zone.
func normalizeAddr(name string, ip netip.Addr) (netip.Addr, error) {
	if !ip.IsValid() {
		return netip.Addr{}, fmt.Errorf("name %q: no IP address", name)
	}
	if ip.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("name %q: %s is not a host address", name, ip)
	}
	return ip.Unmap().WithZone(""), nil
}

// set adds or replaces one record.
func (t *table) set(name string, ip netip.Addr) error {
	n, err := normalizeName(name)
	if err != nil {
		return err
	}
	a, err := normalizeAddr(n, ip)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.byName[n]; ok {
		if old == a {
			return nil
		}
		t.unlinkLocked(n, old)
	}
	t.byName[n] = a
	names := t.byAddr[a]
	i, _ := slices.BinarySearch(names, n)
	t.byAddr[a] = slices.Insert(names, i, n)
	t.serial++
	return nil
}

// remove deletes the record of name; an unknown (or invalid) name is a no-op.
func (t *table) remove(name string) {
	n := strings.ToLower(name)
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.byName[n]; ok {
		delete(t.byName, n)
		t.unlinkLocked(n, old)
		t.serial++
	}
}

func (t *table) unlinkLocked(name string, a netip.Addr) {
	names := t.byAddr[a]
	if i, ok := slices.BinarySearch(names, name); ok {
		names = slices.Delete(names, i, i+1)
	}
	if len(names) == 0 {
		delete(t.byAddr, a)
	} else {
		t.byAddr[a] = names
	}
}

// replace swaps the whole table for records. Every entry is checked first:
// on any error nothing changes.
func (t *table) replace(records map[string]netip.Addr) error {
	byName := make(map[string]netip.Addr, len(records))
	byAddr := make(map[netip.Addr][]string, len(records))
	var errs []error
	for name, ip := range records {
		n, err := normalizeName(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		a, err := normalizeAddr(n, ip)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if prev, dup := byName[n]; dup {
			errs = append(errs, fmt.Errorf("name %q given twice (differing only in case: %s and %s)", n, prev, a))
			continue
		}
		byName[n] = a
		byAddr[a] = append(byAddr[a], n)
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return errors.Join(errs...)
	}
	for _, names := range byAddr {
		slices.Sort(names)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byName, t.byAddr = byName, byAddr
	t.serial++
	return nil
}

// lookup returns the address of a lowercased name.
func (t *table) lookup(name string) (netip.Addr, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	a, ok := t.byName[name]
	return a, ok
}

// reverse returns the names that have address a (a copy, sorted).
func (t *table) reverse(a netip.Addr) []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Clone(t.byAddr[a])
}

// snapshot returns a copy of all records.
func (t *table) snapshot() map[string]netip.Addr {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make(map[string]netip.Addr, len(t.byName))
	for n, a := range t.byName {
		out[n] = a
	}
	return out
}

func (t *table) soaSerial() uint32 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.serial
}
