package disk

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"4GiB": 4 << 30, "4G": 4 << 30, "4g": 4 << 30, "4gib": 4 << 30, "4GB": 4 << 30,
		"512M": 512 << 20, "512MiB": 512 << 20, "512m": 512 << 20,
		"1.5G": 3 << 29, "0.5k": 512, "1K": 1024, "2T": 2 << 40,
		"1048576": 1048576, "1b": 1, "100B": 100, " 8 MiB ": 8 << 20,
	}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "abc", "4X", "G", "-1G", "-5", "0", "0G", "0.0001", "1.2.3G",
		"4 G B", "1e9", "4iB", "99999999999T", "0x10"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want error", in, got)
		}
	}
}
