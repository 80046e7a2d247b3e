package vm

import (
	"context"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"banger/internal/api"
)

func TestValidateNameAccepts(t *testing.T) {
	for _, name := range []string{
		"a",
		"7",
		"ab",
		"a-b",
		"a--b",
		"0-9",
		"bangertest-vm-1",
		"123",
		strings.Repeat("a", 63),
		"a" + strings.Repeat("-", 61) + "z",
	} {
		if err := ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", name, err)
		}
	}
}

func TestValidateNameRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []string // substrings of the message
	}{
		{"empty", "", []string{"empty"}},
		{"64 chars", strings.Repeat("a", 64), []string{"64 characters", "limit is 63"}},
		{"very long", strings.Repeat("b", 200), []string{"200 characters", "limit is 63"}},
		{"leading dash", "-bangertest", []string{`"-bangertest"`, "not starting or ending with '-'"}},
		{"trailing dash", "bangertest-", []string{`"bangertest-"`, "not starting or ending with '-'"}},
		{"only dash", "-", []string{`"-"`, "not a DNS label"}},
		{"uppercase", "BangerTest", []string{`"BangerTest"`, "lowercase"}},
		{"underscore", "banger_test", []string{`"banger_test"`, "not a DNS label"}},
		{"dot", "banger.test", []string{`"banger.test"`, "not a DNS label"}},
		{"space", "banger test", []string{`"banger test"`, "not a DNS label"}},
		{"slash", "../etc", []string{`"../etc"`, "not a DNS label"}},
		{"trailing newline", "bangertest\n", []string{`"bangertest\n"`, "not a DNS label"}},
		{"non-ASCII", "bängertest", []string{`"bängertest"`, "not a DNS label"}},
		// 32 two-byte runes are 64 bytes but 32 characters: the problem is
		// the characters, not the length.
		{"non-ASCII 64 bytes", strings.Repeat("é", 32), []string{"not a DNS label"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateName(tc.in)
			if err == nil {
				t.Fatalf("ValidateName(%q) = nil, want an error", tc.in)
			}
			for _, sub := range tc.want {
				if !strings.Contains(err.Error(), sub) {
					t.Errorf("ValidateName(%q) = %q, want it to mention %q", tc.in, err, sub)
				}
			}
		})
	}
}

var generatedRE = regexp.MustCompile(`^([a-z]+)-([a-z]+)-([0-9]{4})$`)

func TestGenerateNameIsValid(t *testing.T) {
	adj := map[string]bool{}
	for _, a := range adjectives {
		adj[a] = true
	}
	noun := map[string]bool{}
	for _, n := range nouns {
		noun[n] = true
	}
	seen := map[string]bool{}
	for range 500 {
		name := GenerateName()
		if err := ValidateName(name); err != nil {
			t.Fatalf("generated name is invalid: %v", err)
		}
		m := generatedRE.FindStringSubmatch(name)
		if m == nil || !adj[m[1]] || !noun[m[2]] {
			t.Fatalf("generated name %q is not adjective-noun-NNNN from the word lists", name)
		}
		seen[name] = true
	}
	// 400 word pairs × 10000 numbers: 500 draws that collapse to a handful
	// of names mean the randomness is broken.
	if len(seen) < 450 {
		t.Fatalf("500 generated names gave only %d distinct ones", len(seen))
	}
}

// Every word combination, with the longest number, must be a valid name.
func TestGenerateNameWordListsValid(t *testing.T) {
	for _, a := range adjectives {
		for _, n := range nouns {
			if name := a + "-" + n + "-9999"; ValidateName(name) != nil {
				t.Errorf("word pair gives invalid name %q", name)
			}
		}
	}
}

func TestNewIDIsHex16(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{16}$`)
	a, b := newID(), newID()
	if !re.MatchString(a) || !re.MatchString(b) {
		t.Fatalf("ids %q, %q are not 16 hex digits", a, b)
	}
	if a == b {
		t.Fatalf("two ids are equal: %q", a)
	}
}

// reserveVM generates a name when none is given: a valid name no other row
// has, and an address in the network that no other row has.
func TestReserveGeneratesUniqueNameAndAddress(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	taken := insertVM(t, s, "bangertest-taken", api.StateStopped)
	im, err := s.Store.GetImage(ctx, testImage)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{taken.Name: true}
	ips := map[string]bool{taken.IP: true}
	gw := s.Net.Gateway().String()
	for range 10 {
		v, err := s.reserveVM(ctx, createRequest{image: im, vcpu: 1, memoryMiB: 256, workSize: 16 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if err := ValidateName(v.Name); err != nil {
			t.Fatalf("reserved name: %v", err)
		}
		if names[v.Name] {
			t.Fatalf("name %q reserved twice", v.Name)
		}
		names[v.Name] = true
		ip, err := netip.ParseAddr(v.IP)
		if err != nil || !s.Net.CIDR.Contains(ip) || v.IP == gw {
			t.Fatalf("reserved address %q is not a host address in %s (gateway %s)", v.IP, s.Net.CIDR, gw)
		}
		if ips[v.IP] {
			t.Fatalf("address %s reserved twice", v.IP)
		}
		ips[v.IP] = true

		got, err := s.Store.GetVM(ctx, v.Name)
		if err != nil {
			t.Fatalf("reserved row not in store: %v", err)
		}
		if got.State != api.StateCreating || got.ID != v.ID || got.Dir != s.Paths.VMDir(v.ID) || got.Tap != s.Net.TapName(v.ID) {
			t.Fatalf("stored row %+v does not match the reservation %+v", got, v)
		}
	}
	if n := len(listVMs(t, s)); n != 11 {
		t.Fatalf("%d rows, want 11", n)
	}
}
