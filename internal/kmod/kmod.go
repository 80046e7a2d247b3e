// Package kmod resolves which kernel module files a guest must load, and in
// which order, from a kernel's unpacked modules tree (lib/modules/RELEASE).
//
// Dependencies come from each module's own ELF .modinfo section ("depends="),
// so a tree straight out of a Debian package works without running depmod;
// modules.builtin (shipped by the package) says which modules need no file.
//
//	kmod.go       Tree (index of a modules tree), Resolve (load order), ModInfo
//	kmod_test.go  tests against real ELF files written by the test
//
// Compressed modules (.ko.xz, .ko.zst) are not supported yet: Resolve names
// them in its error.
package kmod

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Name normalises a module name as the kernel does: '-' and '_' are the same.
func Name(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		s = strings.TrimSuffix(s, ext)
	}
	return strings.ReplaceAll(s, "-", "_")
}

// Tree indexes one modules tree: module name → path relative to Dir.
type Tree struct {
	Dir     string
	files   map[string]string
	builtin map[string]bool
}

// Open indexes the modules tree dir (the directory holding kernel/ and
// modules.builtin, i.e. lib/modules/RELEASE).
func Open(dir string) (*Tree, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("modules directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("modules directory %s is not a directory", dir)
	}
	t := &Tree{Dir: dir, files: map[string]string{}, builtin: map[string]bool{}}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.Contains(d.Name(), ".ko") {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if _, dup := t.files[Name(rel)]; !dup {
			t.files[Name(rel)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	if len(t.files) == 0 {
		return nil, fmt.Errorf("no kernel modules (*.ko) under %s; pass the lib/modules/RELEASE directory", dir)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				t.builtin[Name(l)] = true
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return t, nil
}

// Builtin reports whether the kernel has the module built in.
func (t *Tree) Builtin(name string) bool { return t.builtin[Name(name)] }

// Resolve returns the files (relative to Dir) to load for the wanted modules,
// every dependency before the modules that need it, each once. Built-in
// modules are skipped; a module that is neither a file nor built in is an
// error.
func (t *Tree) Resolve(wanted []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle through %s", name)
		}
		rel, ok := t.files[name]
		if !ok {
			if t.builtin[name] {
				state[name] = 2
				return nil
			}
			if from != "" {
				return fmt.Errorf("module %s (needed by %s) is neither in %s nor built in", name, from, t.Dir)
			}
			return fmt.Errorf("module %s is neither in %s nor built in", name, t.Dir)
		}
		if !strings.HasSuffix(rel, ".ko") {
			return fmt.Errorf("module %s is compressed (%s); only uncompressed .ko modules are supported", name, rel)
		}
		state[name] = 1
		info, err := ModInfo(filepath.Join(t.Dir, rel))
		if err != nil {
			return err
		}
		deps := strings.Split(info["depends"], ",")
		sort.Strings(deps) // a stable order whatever the file says
		for _, d := range deps {
			if d = strings.TrimSpace(d); d != "" {
				if err := visit(Name(d), name); err != nil {
					return err
				}
			}
		}
		state[name] = 2
		order = append(order, rel)
		return nil
	}
	for _, w := range wanted {
		if err := visit(Name(w), ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// ModInfo reads the key=value pairs of a module's .modinfo ELF section
// (later keys of the same name are appended, comma-separated).
func ModInfo(path string) (map[string]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	info := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		if old, seen := info[k]; seen && old != "" && v != "" {
			v = old + "," + v
		}
		info[k] = v
	}
	return info, nil
}
