package vm

import (
	"crypto/rand"
	"fmt"
	"math/big"
	"regexp"
	"unicode/utf8"
)

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateName checks that name is a DNS label: 1-63 characters of
// [a-z0-9-], not starting or ending with '-'. Names reach hostnames, DNS,
// kernel command lines and file paths, so this is checked once, here.
func ValidateName(name string) error {
	if labelRE.MatchString(name) {
		return nil
	}
	switch {
	case name == "":
		return fmt.Errorf("VM name is empty")
	case utf8.RuneCountInString(name) > 63:
		return fmt.Errorf("VM name %q is %d characters long; the limit is 63", name, utf8.RuneCountInString(name))
	default:
		return fmt.Errorf("VM name %q is not a DNS label: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'", name)
	}
}

var (
	adjectives = []string{"brisk", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nimble", "proud", "quiet", "rapid", "sunny", "tidy", "vivid", "witty", "zesty", "bold"}
	nouns      = []string{"otter", "falcon", "badger", "heron", "lynx", "marten", "newt", "orca", "panda", "quokka", "raven", "seal", "tapir", "urchin", "vole", "walrus", "yak", "zebra", "ibis", "koala"}
)

func pick(list []string) string {
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(list))))
	return list[n.Int64()]
}

// GenerateName returns a random name such as "brisk-otter-4821".
func GenerateName() string {
	n, _ := rand.Int(rand.Reader, big.NewInt(10000))
	return fmt.Sprintf("%s-%s-%04d", pick(adjectives), pick(nouns), n.Int64())
}

// newID returns a random 16-hex-digit id.
func newID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}
