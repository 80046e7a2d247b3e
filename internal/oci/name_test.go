package oci

import (
	"regexp"
	"strings"
	"testing"
)

func TestDefaultName(t *testing.T) {
	digest := "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for ref, want := range map[string]string{
		"docker.io/library/debian:bookworm":          "debian-bookworm",
		"debian:bookworm":                            "debian-bookworm",
		"ghcr.io/org/tool:v1.2":                      "tool-v1.2",
		"alpine":                                     "alpine-latest",
		"localhost:5000/team/app":                    "app-latest",
		"localhost:5000/team/app:Dev_Build":          "app-dev-build",
		"127.0.0.1:41234/x/y:1":                      "y-1",
		"ghcr.io/org/tool@" + digest:                 "tool-0123456789ab",
		"ghcr.io/org/tool:v1@" + digest:              "tool-v1",
		"quay.io/Org/My_Image:-odd-":                 "my-image-odd",
		"registry/" + strings.Repeat("a", 80) + ":t": strings.Repeat("a", 63),
		":::": "image-latest",
	} {
		if got := DefaultName(ref); got != want {
			t.Errorf("DefaultName(%q) = %q, want %q", ref, got, want)
		}
	}
	label := regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)
	for _, ref := range []string{"A/B:C", "x/__:__", "x/y:" + strings.Repeat("v-", 40)} {
		if got := DefaultName(ref); !label.MatchString(got) {
			t.Errorf("DefaultName(%q) = %q: not a label", ref, got)
		}
	}
}
