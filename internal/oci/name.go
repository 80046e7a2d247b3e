package oci

import (
	"strings"
)

// DefaultName derives an image name from a reference: the last path
// element of the repository and the tag, lowercased and reduced to
// [a-z0-9.-], at most 63 characters:
//
//	docker.io/library/debian:bookworm  -> debian-bookworm
//	ghcr.io/org/tool:v1.2              -> tool-v1.2
//	alpine                             -> alpine-latest
//	ghcr.io/org/tool@sha256:0123abcd…  -> tool-0123abcd0123 (12 hex digits)
//	tool:v1@sha256:…                   -> tool-v1 (the tag says more)
//
// The caller still validates the result (and handles clashes).
func DefaultName(ref string) string {
	ref = strings.TrimSpace(ref)
	rest, digest, _ := strings.Cut(ref, "@")
	repo, tag := rest, ""
	// A tag follows the last colon after the last slash (a colon before
	// it is a registry port).
	if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		repo, tag = rest[:i], rest[i+1:]
	}
	base := repo[strings.LastIndexByte(repo, '/')+1:]
	suffix := tag
	if suffix == "" && digest != "" {
		_, hex, ok := strings.Cut(digest, ":")
		if !ok {
			hex = digest
		}
		suffix = hex[:min(12, len(hex))]
	}
	if suffix == "" {
		suffix = "latest"
	}
	b := sanitize(base)
	s := sanitize(suffix)
	if b == "" {
		b = "image"
	}
	name := b
	if s != "" {
		name += "-" + s
	}
	if len(name) > 63 {
		name = strings.TrimRight(name[:63], "-.")
	}
	return name
}

// sanitize lowercases s, maps characters outside [a-z0-9.-] to '-',
// collapses runs of '-' and trims '-' and '.' from both ends.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.':
			b.WriteRune(r)
		default:
			if b.Len() > 0 && !strings.HasSuffix(b.String(), "-") {
				b.WriteByte('-')
			}
		}
	}
	return strings.Trim(b.String(), "-.")
}
