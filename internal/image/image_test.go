package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/oci"
)

// stage makes a staging tree with a manifest the way oci.Flatten leaves it.
func stage(t *testing.T, build func(dir string)) (string, *oci.Manifest) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	build(dir)
	m := &oci.Manifest{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		e := oci.Entry{Path: "/" + rel, Mode: oci.ModeRegular | 0o644}
		if rel == "." {
			e.Path = "/"
		}
		switch {
		case fi.IsDir():
			e.Mode = oci.ModeDir | 0o755
		case fi.Mode()&os.ModeSymlink != 0:
			e.Mode = oci.ModeSymlink | 0o777
		}
		m.Entries = append(m.Entries, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

func entry(m *oci.Manifest, p string) (oci.Entry, bool) {
	for _, e := range m.Entries {
		if e.Path == p {
			return e, true
		}
	}
	return oci.Entry{}, false
}

func TestInject(t *testing.T) {
	dir, m := stage(t, func(d string) {
		os.MkdirAll(d+"/etc/ssh", 0o700)
		os.MkdirAll(d+"/usr/lib/systemd/system", 0o700)
		os.WriteFile(d+"/usr/lib/systemd/system/systemd-networkd.service", nil, 0o600)
		os.Symlink("usr/lib", d+"/lib")
		os.WriteFile(d+"/etc/ssh/ssh_host_rsa_key", []byte("baked"), 0o600)
		os.WriteFile(d+"/etc/fstab", []byte("/dev/sda1 / ext4 defaults 0 1\n"), 0o600)
	})
	files, err := GuestFiles()
	if err != nil {
		t.Fatal(err)
	}
	if err := Inject(dir, m, files); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dir + "/etc/fstab"); !strings.Contains(string(b), "banger") {
		t.Errorf("fstab not replaced: %q", b)
	}
	if _, err := os.Lstat(dir + "/etc/ssh/ssh_host_rsa_key"); !os.IsNotExist(err) {
		t.Errorf("baked host key kept: %v", err)
	}
	if _, ok := entry(m, "/etc/ssh/ssh_host_rsa_key"); ok {
		t.Error("removed host key still in the manifest")
	}
	for p, mode := range map[string]uint32{
		"/etc/ssh/sshd_config.d":                oci.ModeDir | 0o755,
		"/etc/ssh/sshd_config.d/10-banger.conf": oci.ModeRegular | 0o644,
		"/etc/machine-id":                       oci.ModeRegular | 0o644,
		"/etc/systemd/system/multi-user.target.wants/systemd-networkd.service": oci.ModeSymlink | 0o777,
	} {
		e, ok := entry(m, p)
		if !ok || e.Mode != mode || e.UID != 0 || e.GID != 0 {
			t.Errorf("%s: manifest entry %+v (present %v), want mode %o root-owned", p, e, ok, mode)
		}
		if _, err := os.Lstat(dir + p); err != nil {
			t.Errorf("%s not staged: %v", p, err)
		}
	}
	seen := map[string]bool{}
	for _, e := range m.Entries {
		if seen[e.Path] {
			t.Errorf("%s listed twice", e.Path)
		}
		seen[e.Path] = true
	}

	// Without the unit, no dangling enable link is made.
	dir2, m2 := stage(t, func(d string) { os.MkdirAll(d+"/etc", 0o700) })
	if err := Inject(dir2, m2, files); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir2 + "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"); !os.IsNotExist(err) {
		t.Errorf("networkd enabled in an image without it: %v", err)
	}
}

// The image's symlinks are never written through.
func TestInjectRefusesSymlinkedParent(t *testing.T) {
	outside := t.TempDir()
	dir, m := stage(t, func(d string) { os.Symlink(outside, d+"/etc") })
	err := Inject(dir, m, []GuestFile{{Path: "/etc/fstab", Data: []byte("x")}})
	if err == nil || !strings.Contains(err.Error(), "/etc") {
		t.Fatalf("Inject through a symlinked /etc: %v, want a refusal naming /etc", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("wrote outside the tree: %v", ents)
	}
	if err := Inject(dir, m, []GuestFile{{Path: "/etc/../x"}}); err == nil {
		t.Error("an unclean path was accepted")
	}
}

func TestStoreStageCommitRemove(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "images")}
	st, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(st, RootFSFile), []byte("fs"), 0o600)
	dir, err := s.Commit(st, "one")
	if err != nil || dir != s.Path("one") {
		t.Fatalf("commit = %q, %v", dir, err)
	}
	st2, _ := s.Stage()
	os.WriteFile(filepath.Join(st2, RootFSFile), []byte("other"), 0o600)
	if _, err := s.Commit(st2, "one"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("commit over an existing image: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, RootFSFile)); string(b) != "fs" {
		t.Fatalf("existing image changed: %q", b)
	}
	if err := s.CleanStale(); err != nil {
		t.Fatal(err)
	}
	if left, _ := s.Leftovers(map[string]bool{"one": true}); len(left) != 0 {
		t.Fatalf("after CleanStale: %v", left)
	}
	if err := s.Remove("one"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("one"); err != nil {
		t.Fatalf("removing a missing image: %v", err)
	}
	if left, _ := s.Leftovers(nil); len(left) != 0 {
		t.Fatalf("after remove: %v", left)
	}
	if err := s.Remove("../x"); err == nil {
		t.Error("a name with a slash was accepted")
	}
}
