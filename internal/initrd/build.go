package initrd

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"banger/internal/kmod"
)

// GuestModules are the modules a guest needs before its root is mounted
// (their dependencies are added): the virtio transports, disk, network,
// console (the agent's virtio-serial port), entropy and vsock (Firecracker's
// agent channel).
var GuestModules = []string{"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net",
	"virtio_console", "virtio_rng", "vmw_vsock_virtio_transport"}

// Spec is what goes into a generated initramfs.
type Spec struct {
	Init    string   // banger-init binary, becomes /init (required)
	Agent   string   // banger-agent binary, /banger/banger-agent (optional)
	Modules string   // the kernel's lib/modules/RELEASE directory (optional: a kernel with everything built in)
	Release string   // kernel release; default: the base name of Modules
	Load    []string // modules to load; default GuestModules
}

// Build returns the path of the gzip'd newc initramfs for spec in cacheDir,
// generating it when it is not there yet. Its name is the hash of every
// input (binaries, module files and their paths, release), so a new agent,
// init or kernel makes a new file; it is written to a temporary file and
// renamed into place, so a reader never sees half of one.
func Build(cacheDir string, spec Spec) (string, error) {
	if spec.Init == "" {
		return "", fmt.Errorf("initramfs: no banger-init binary")
	}
	files := []cpioFile{}
	add := func(name string, perm uint32, src string) error {
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		files = append(files, cpioFile{name: name, perm: perm, data: b})
		return nil
	}
	if err := add("init", 0o755, spec.Init); err != nil {
		return "", err
	}
	if spec.Agent != "" {
		if err := add(AgentPath, 0o755, spec.Agent); err != nil {
			return "", err
		}
	}
	if spec.Modules != "" {
		if spec.Release == "" {
			spec.Release = filepath.Base(filepath.Clean(spec.Modules))
		}
		load := spec.Load
		if load == nil {
			load = GuestModules
		}
		tree, err := kmod.Open(spec.Modules)
		if err != nil {
			return "", err
		}
		order, err := tree.Resolve(load)
		if err != nil {
			return "", err
		}
		for _, rel := range order {
			if err := add(filepath.Join("lib/modules", spec.Release, rel), 0o644, filepath.Join(spec.Modules, rel)); err != nil {
				return "", err
			}
		}
		list := strings.Join(order, "\n")
		if list != "" {
			list += "\n"
		}
		files = append(files, cpioFile{name: "etc/banger-modules", perm: 0o644, data: []byte(list)})
	}

	h := sha256.New()
	fmt.Fprintf(h, "banger-initramfs v1\x00%s\x00", spec.Release)
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", f.name, f.perm, len(f.data))
		h.Write(f.data)
	}
	out := filepath.Join(cacheDir, "initramfs-"+hex.EncodeToString(h.Sum(nil))[:24]+".img")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}

	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err := writeArchive(zw, files); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	return out, writeAtomic(cacheDir, out, buf.Bytes())
}

type cpioFile struct {
	name string
	perm uint32
	data []byte
}

// writeArchive writes the directories every initramfs needs, /dev/console
// and /dev/null (the kernel opens the console for /init before anything is
// mounted), then files with their parent directories, then the trailer.
func writeArchive(w io.Writer, files []cpioFile) error {
	cw := newWriter(w)
	dirs := map[string]bool{}
	mkdir := func(d string) {
		var parts []string
		for d != "." && d != "/" && d != "" {
			parts = append(parts, d)
			d = filepath.Dir(d)
		}
		for i := len(parts) - 1; i >= 0; i-- {
			if !dirs[parts[i]] {
				dirs[parts[i]] = true
				cw.dir(parts[i])
			}
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "etc", "run"} {
		mkdir(d)
	}
	cw.node("dev/console", 0o020600, 5, 1)
	cw.node("dev/null", 0o020666, 1, 3)
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	for _, f := range files {
		mkdir(filepath.Dir(f.name))
		cw.file(f.name, f.perm, f.data)
	}
	cw.trailer()
	return cw.err
}

// writeAtomic writes data to out through a temporary file in dir.
func writeAtomic(dir, out string, data []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".initrd-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}
