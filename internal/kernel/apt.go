package kernel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// concretePkgRE matches the versioned kernel package a metapackage depends on.
var concretePkgRE = regexp.MustCompile(`^linux-image-[0-9][A-Za-z0-9.+-]*$`)

// resolvePackage resolves a kernel metapackage (linux-image-cloud-amd64) to
// the concrete package it depends on, running apt-get update once when apt
// does not know it.
func resolvePackage(ctx context.Context, meta string) (string, error) {
	find := func() string {
		out, _ := exec.CommandContext(ctx, "apt-cache", "depends", meta).Output()
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && f[0] == "Depends:" && concretePkgRE.MatchString(f[1]) {
				return f[1]
			}
		}
		return ""
	}
	if concretePkgRE.MatchString(meta) {
		return meta, nil
	}
	if p := find(); p != "" {
		return p, nil
	}
	if out, err := exec.CommandContext(ctx, "apt-get", "-q", "update").CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get update: %v: %s", err, lastLine(out))
	}
	if p := find(); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("cannot resolve %s to a kernel package through the host's apt sources (is a Debian source configured?)", meta)
}

// Package is a package version as the host's apt sources describe it.
type Package struct {
	Name, Version, SHA256 string
	Size                  int64
}

// FileName is the package's file name in the deb cache.
func (p Package) FileName() string {
	return p.Name + "_" + strings.ReplaceAll(p.Version, ":", "%3a") + ".deb"
}

// candidate describes the version of pkg apt would install (no network:
// it reads apt's lists).
func candidate(ctx context.Context, pkg string) (Package, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		return Package{}, fmt.Errorf("apt-cache show %s: %v", pkg, err)
	}
	p := Package{Name: pkg}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ": ")
		switch k {
		case "Version":
			p.Version = v
		case "SHA256":
			p.SHA256 = v
		case "Size":
			p.Size, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if p.Version == "" || p.SHA256 == "" {
		return Package{}, fmt.Errorf("apt-cache show %s: no version or SHA256", pkg)
	}
	return p, nil
}

// fetch returns pkg's .deb from cacheDir, downloading it there with
// apt-get download when it is missing. Either way its SHA256 must be the
// one apt's (signed) lists give.
func fetch(ctx context.Context, p Package, cacheDir string) (deb string, cached bool, err error) {
	deb = filepath.Join(cacheDir, p.FileName())
	if sum, err := fileSHA256(deb); err == nil {
		if sum == p.SHA256 {
			return deb, true, nil
		}
		os.Remove(deb) // damaged or of another build: fetch it again
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", false, err
	}
	dir, err := os.MkdirTemp(cacheDir, ".download-")
	if err != nil {
		return "", false, err
	}
	defer os.RemoveAll(dir)
	cmd := exec.CommandContext(ctx, "apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", p.Name+"="+p.Version)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", false, fmt.Errorf("apt-get download %s=%s: %v: %s", p.Name, p.Version, err, lastLine(out))
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(debs) != 1 {
		return "", false, fmt.Errorf("apt-get download %s produced %d packages", p.Name, len(debs))
	}
	sum, err := fileSHA256(debs[0])
	if err != nil {
		return "", false, err
	}
	if sum != p.SHA256 {
		return "", false, fmt.Errorf("downloaded %s has sha256 %s, apt's lists say %s", filepath.Base(debs[0]), sum, p.SHA256)
	}
	return deb, false, os.Rename(debs[0], deb)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func lastLine(b []byte) string {
	ls := strings.Split(strings.TrimSpace(string(b)), "\n")
	return ls[len(ls)-1]
}
