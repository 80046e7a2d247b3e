package image

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/oci"
)

//go:embed guest
var guestFS embed.FS

// GuestFile is one path banger writes into a flattened image.
type GuestFile struct {
	Path string // absolute path in the image
	Data []byte
	// Link, when set, makes Path a symlink to Link instead of a file.
	Link string
	// Remove deletes Path (a file) instead of writing it.
	Remove bool
}

// GuestFiles returns what banger injects into every pulled image: sshd and
// journald settings (guest/ in this package), an empty fstab, an empty
// machine-id (each VM gets its own on first boot), systemd-networkd enabled
// (banger's initramfs writes its .network file from the kernel command line)
// and no SSH host keys (each VM makes its own).
func GuestFiles() ([]GuestFile, error) {
	var out []GuestFile
	err := fs.WalkDir(guestFS, "guest", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := guestFS.ReadFile(p)
		if err != nil {
			return err
		}
		out = append(out, GuestFile{Path: strings.TrimPrefix(p, "guest"), Data: b})
		return nil
	})
	out = append(out,
		GuestFile{Path: "/etc/machine-id", Data: nil},
		GuestFile{Path: "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
			Link: "/lib/systemd/system/systemd-networkd.service"},
	)
	for _, k := range []string{"rsa", "ecdsa", "ed25519", "dsa"} {
		for _, suffix := range []string{"", ".pub"} {
			out = append(out, GuestFile{Path: "/etc/ssh/ssh_host_" + k + "_key" + suffix, Remove: true})
		}
	}
	return out, err
}

// Inject writes files into a staging directory left by oci.Flatten and
// records them in its manifest (root-owned; files 0644, directories 0755).
// A parent directory that the image has as a symlink, or a path that is a
// directory in the image, is refused with an error naming it: banger never
// writes through the image's symlinks. The systemd-networkd link is only
// made when the image has the unit.
func Inject(stagingDir string, m *oci.Manifest, files []GuestFile) error {
	idx := make(map[string]int, len(m.Entries))
	for i, e := range m.Entries {
		idx[e.Path] = i
	}
	set := func(e oci.Entry) {
		if i, ok := idx[e.Path]; ok {
			m.Entries[i] = e
			return
		}
		idx[e.Path] = len(m.Entries)
		m.Entries = append(m.Entries, e)
	}
	now := time.Now().UTC().Truncate(time.Second)
	for _, f := range files {
		clean := path.Clean("/" + f.Path)
		if clean == "/" || clean != f.Path {
			return fmt.Errorf("inject %q: want a clean absolute path", f.Path)
		}
		host := filepath.Join(stagingDir, filepath.FromSlash(clean))
		if f.Link != "" && !targetExists(stagingDir, f.Link) {
			continue
		}
		if f.Remove {
			fi, err := os.Lstat(host)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			if fi.IsDir() {
				return fmt.Errorf("inject: %s is a directory in the image; banger expected a file", clean)
			}
			if err := parentsReal(stagingDir, clean); err != nil {
				return err
			}
			if err := os.Remove(host); err != nil {
				return err
			}
			delete(idx, clean)
			continue
		}
		// Parent directories: real directories in the image, or made here.
		parts := strings.Split(strings.TrimPrefix(path.Dir(clean), "/"), "/")
		cur := ""
		for _, p := range parts {
			if p == "" {
				continue
			}
			cur += "/" + p
			fi, err := os.Lstat(filepath.Join(stagingDir, cur))
			switch {
			case errors.Is(err, fs.ErrNotExist):
				if err := os.Mkdir(filepath.Join(stagingDir, cur), 0o700); err != nil {
					return err
				}
				set(oci.Entry{Path: cur, Mode: oci.ModeDir | 0o755, ModTime: now})
			case err != nil:
				return err
			case !fi.IsDir():
				return fmt.Errorf("inject %s: %s is not a directory in the image (%v); banger does not write through it", clean, cur, fi.Mode().Type())
			}
		}
		fi, err := os.Lstat(host)
		if err == nil {
			if fi.IsDir() {
				return fmt.Errorf("inject: %s is a directory in the image; banger expected a file", clean)
			}
			if err := os.Remove(host); err != nil {
				return err
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if f.Link != "" {
			if err := os.Symlink(f.Link, host); err != nil {
				return err
			}
			set(oci.Entry{Path: clean, Mode: oci.ModeSymlink | 0o777, ModTime: now})
			continue
		}
		if err := os.WriteFile(host, f.Data, 0o600); err != nil {
			return err
		}
		set(oci.Entry{Path: clean, Mode: oci.ModeRegular | 0o644, ModTime: now})
	}
	// Drop entries of removed paths, keeping the walk order of the rest.
	kept := m.Entries[:0]
	for i, e := range m.Entries {
		if j, ok := idx[e.Path]; ok && j == i {
			kept = append(kept, e)
		}
	}
	m.Entries = kept
	return nil
}

// parentsReal checks that no parent of p (an absolute image path) is a
// symlink in the staging directory.
func parentsReal(stagingDir, p string) error {
	cur := stagingDir
	for _, part := range strings.Split(strings.TrimPrefix(path.Dir(p), "/"), "/") {
		if part == "" {
			continue
		}
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("inject %s: a parent is not a directory in the image; banger does not write through it", p)
		}
	}
	return nil
}

// targetExists reports whether an absolute in-image path exists, following
// the image's symlinks only inside the staging directory (os.Root refuses
// escapes, so merged-/usr images with /lib -> usr/lib resolve).
func targetExists(stagingDir, p string) bool {
	r, err := os.OpenRoot(stagingDir)
	if err != nil {
		return false
	}
	defer r.Close()
	_, err = r.Stat(strings.TrimPrefix(p, "/"))
	return err == nil
}

// seedMax bounds the work seed taken from an image's /root: it is copied
// into every new work disk.
const seedMax = 256 << 20

// SeedFromTree copies the image's /root (directories and regular files,
// with their modes from the manifest) to seedDir, because the work disk
// mounted on /root would hide it: it becomes each new VM's starting /root.
// It reports false, creating nothing, when the image has no /root
// directory, or why it skipped a larger one.
func SeedFromTree(tree string, m *oci.Manifest, seedDir string) (bool, string, error) {
	src := filepath.Join(tree, "root")
	if fi, err := os.Lstat(src); err != nil || !fi.IsDir() {
		return false, "", nil
	}
	if n, err := oci.ContentBytes(src); err != nil {
		return false, "", err
	} else if n > seedMax {
		return false, fmt.Sprintf("/root holds %d MiB, more than the %d MiB a work seed may; new VMs start with an empty /root", n>>20, seedMax>>20), nil
	}
	perm := make(map[string]os.FileMode, len(m.Entries))
	for _, e := range m.Entries {
		perm[e.Path] = os.FileMode(e.Mode & 0o777)
	}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(seedDir, rel)
		key := "/root"
		if rel != "." {
			key += "/" + filepath.ToSlash(rel)
		}
		mode := perm[key]
		switch {
		case d.IsDir():
			return os.Mkdir(dst, mode|0o700)
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, mode|0o400)
		}
		return nil // symlinks, FIFOs: not carried into work disks
	})
	if err != nil {
		os.RemoveAll(seedDir)
		return false, "", err
	}
	return true, "", nil
}
