package disk

import (
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strings"
)

var sizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(i?b)?$`)

var sizeShift = map[string]uint{"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}

// ParseSize parses a size such as "4GiB", "4G", "512M", "1.5g" or "1048576"
// (bytes). Units are case-insensitive binary multiples: K, M, G, T, P with
// optional "i" and "B" (4G = 4GiB = 4×2³⁰). Fractions are rounded down to a
// whole byte. Zero, negative and malformed sizes are errors.
func ParseSize(s string) (int64, error) {
	in := strings.ToLower(strings.TrimSpace(s))
	if strings.HasPrefix(in, "-") {
		return 0, fmt.Errorf("size %q: must be positive", s)
	}
	m := sizeRE.FindStringSubmatch(in)
	if m == nil || m[2] == "" && m[3] == "ib" {
		return 0, fmt.Errorf("size %q: want a number with an optional unit, e.g. 512M, 4GiB or 1048576", s)
	}
	r, ok := new(big.Rat).SetString(m[1])
	if !ok {
		return 0, fmt.Errorf("size %q: bad number", s)
	}
	r.Mul(r, new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), sizeShift[m[2]])))
	n := new(big.Int).Quo(r.Num(), r.Denom())
	if !n.IsInt64() || n.Int64() > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	if n.Sign() == 0 {
		return 0, fmt.Errorf("size %q: must be larger than zero", s)
	}
	return n.Int64(), nil
}
