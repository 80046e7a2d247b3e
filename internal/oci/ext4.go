package oci

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sizing of BuildExt4's image when no size is given (see autoSize).
const (
	blockSize = 4096
	// inodeSize is mke2fs's default on-disk inode size.
	inodeSize = 256
	// overheadNum/overheadDen scale the content (data blocks + inode
	// table): extent tree blocks, bitmaps, group descriptors, directory
	// growth and the reserved-for-root 5 % all fit in the extra quarter.
	overheadNum, overheadDen = 5, 4
	// minExtra is added on top: the journal (16-64 MiB below 16 GiB) and
	// free space for the guest to write in (logs, package installs): a
	// VM's root disk is a copy-on-write view of this image whose file
	// system is not grown.
	minExtra = 320 << 20
	// sizeRound is what automatic sizes round up to.
	sizeRound = 64 << 20
	// bytesPerInode is mke2fs's default ratio; the image gets at least
	// this many inodes, and at least 25 % more than the content needs.
	bytesPerInode = 16384
	// debugfsLineMax is under debugfs's BUFSIZ line buffer.
	debugfsLineMax = 8000
)

// Usage is what the staged content needs, as counted by BuildExt4.
type Usage struct {
	DataBytes int64 // data blocks of files, directories, long symlinks and xattrs
	Inodes    int64 // distinct inodes
}

// Need returns the bytes the content occupies in the file system, inode
// table included.
func (u Usage) Need() int64 { return u.DataBytes + u.Inodes*inodeSize }

// AutoSize is the image size BuildExt4 picks when none is given: the
// content times 5/4, plus 320 MiB, rounded up to 64 MiB.
func (u Usage) AutoSize() int64 {
	return roundUp(u.Need()*overheadNum/overheadDen+minExtra, sizeRound)
}

// MinSize is the smallest size BuildExt4 accepts for the content.
func (u Usage) MinSize() int64 {
	return roundUp(u.Need()*21/20+32<<20, 1<<20)
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

// BuildExt4 makes the ext4 image out from stagingDir (as left by Flatten)
// and its manifest, without root and without mounting:
//
//  1. mkfs.ext4 -d copies the tree into a new file system (hardlinks kept,
//     zero blocks left sparse), root directory owned by 0:0;
//  2. one batched debugfs -w script sets every path's uid, gid and full
//     mode (type bits, setuid/setgid/sticky) from the manifest, writes the
//     xattrs (ea_set) and turns FIFO placeholders into FIFOs (mknod);
//  3. the image is read back (debugfs ls -p of every directory) and every
//     path's type, mode, uid and gid compared with the manifest, and
//     e2fsck -fn checks the file system.
//
// size 0 sizes the image from the content (Usage.AutoSize); a positive
// size (parse user input with disk.ParseSize, e.g. "4GiB" or "512M") is
// used as given, and is refused when below Usage.MinSize. The image is
// built in a temporary file next to out and renamed into place; out must
// not exist. On error nothing is left at out or next to it.
func BuildExt4(ctx context.Context, stagingDir string, m *Manifest, out string, size int64) (err error) {
	if m == nil {
		return errors.New("build ext4: no manifest")
	}
	if size < 0 {
		return fmt.Errorf("build ext4: size %d: must not be negative", size)
	}
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("build ext4: %s already exists", out)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, t := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := tool(t); err != nil {
			return err
		}
	}
	usage, err := checkStaging(ctx, stagingDir, m)
	if err != nil {
		return err
	}
	if size == 0 {
		size = usage.AutoSize()
	} else if min := usage.MinSize(); size < min {
		return fmt.Errorf("build ext4: size %d bytes is too small for the content (%d bytes in %d inodes): use at least %d MiB",
			size, usage.DataBytes, usage.Inodes, min>>20)
	}
	inodes := max(size/bytesPerInode, usage.Inodes*5/4+4096)

	work, err := os.MkdirTemp("", "banger-oci-ext4-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	script := filepath.Join(work, "script")
	if err := writeScript(script, work, m); err != nil {
		return err
	}

	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	err = tmp.Truncate(size)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// No size argument: mke2fs would read it in 1 KiB units; the file is sized.
	if _, err := run(ctx, "mkfs.ext4", "-q", "-F", "-b", strconv.Itoa(blockSize), "-N", strconv.FormatInt(inodes, 10),
		"-E", "root_owner=0:0,no_copy_xattrs", "-d", stagingDir, tmp.Name()); err != nil {
		if strings.Contains(err.Error(), "Could not allocate") || strings.Contains(err.Error(), "No space left") {
			return fmt.Errorf("build ext4: %d bytes is too small for the content: %w", size, err)
		}
		return fmt.Errorf("build ext4: %w", err)
	}
	if err := debugfs(ctx, tmp.Name(), script, true, nil); err != nil {
		return fmt.Errorf("build ext4: restoring owners and modes: %w", err)
	}
	if err := verifyImage(ctx, work, tmp.Name(), m); err != nil {
		return err
	}
	if _, err := run(ctx, "e2fsck", "-fn", tmp.Name()); err != nil {
		return fmt.Errorf("build ext4: the new file system does not check clean: %w", err)
	}
	if err := syncFile(tmp.Name()); err != nil {
		return err
	}
	return renameNoReplace(tmp.Name(), out)
}

// checkStaging walks the staged tree, checks that it and the manifest
// describe the same paths with the same types, and counts what the
// content needs.
func checkStaging(ctx context.Context, dir string, m *Manifest) (Usage, error) {
	want := make(map[string]Entry, len(m.Entries))
	for _, e := range m.Entries {
		if _, dup := want[e.Path]; dup {
			return Usage{}, fmt.Errorf("build ext4: manifest lists %s twice", e.Path)
		}
		want[e.Path] = e
	}
	type ino struct{ dev, ino uint64 }
	seen := map[ino]bool{}
	var u Usage
	found := 0
	err := walkImage(ctx, dir, func(key, p string, d fs.DirEntry) error {
		if strings.ContainsAny(key, "\n\r") {
			return fmt.Errorf("build ext4: %q: names with newlines cannot be handled by debugfs", key)
		}
		e, ok := want[key]
		if !ok {
			return fmt.Errorf("build ext4: %s is staged but not in the manifest", key)
		}
		found++
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("build ext4: %s: no stat data", key)
		}
		if st.Nlink > 1 && !fi.IsDir() {
			k := ino{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		u.Inodes++
		if xattrBytes(e.Xattrs) > 100 { // more than the in-inode space
			u.DataBytes += blockSize
		}
		switch mt := fi.Mode().Type(); {
		case mt == fs.ModeDir && e.Type() == ModeDir:
			u.DataBytes += max(blockSize, roundUp(fi.Size(), blockSize))
		case mt == fs.ModeSymlink && e.Type() == ModeSymlink:
			if fi.Size() >= 60 { // longer targets need a block
				u.DataBytes += blockSize
			}
		case mt.IsRegular() && e.Type() == ModeRegular:
			u.DataBytes += min(roundUp(fi.Size(), blockSize), roundUp(st.Blocks*512, blockSize))
			// An extent tree block per 512 MiB (the inode holds 4 extents of
			// at most 128 MiB); fragmentation is in the overhead factor.
			u.DataBytes += fi.Size() / (512 << 20) * blockSize
		case mt.IsRegular() && e.Type() == ModeFIFO && fi.Size() == 0:
		default:
			return fmt.Errorf("build ext4: %s is staged as %v but the manifest says mode %#o", key, mt, e.Mode)
		}
		return nil
	})
	if err != nil {
		return Usage{}, err
	}
	if found != len(want) {
		for _, e := range m.Entries {
			if _, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(e.Path))); err != nil {
				return Usage{}, fmt.Errorf("build ext4: %s is in the manifest but not staged", e.Path)
			}
		}
		return Usage{}, errors.New("build ext4: manifest and staging directory disagree")
	}
	return u, nil
}

func xattrBytes(x map[string][]byte) int {
	n := 0
	for k, v := range x {
		n += len(k) + len(v) + 16
	}
	return n
}

// writeScript writes the debugfs commands that give every manifest entry
// its owner, mode and xattrs (xattr values go to files in dir).
func writeScript(script, dir string, m *Manifest) (err error) {
	f, err := os.Create(script)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	line := func(format string, args ...any) error {
		s := fmt.Sprintf(format, args...)
		if len(s) > debugfsLineMax {
			return fmt.Errorf("build ext4: path too long for debugfs: %.100s...", s)
		}
		_, err := w.WriteString(s + "\n")
		return err
	}
	nval := 0
	for _, e := range m.Entries {
		if !strings.HasPrefix(e.Path, "/") || strings.ContainsAny(e.Path, "\n\r\x00") {
			return fmt.Errorf("build ext4: bad manifest path %q", e.Path)
		}
		p := dq(e.Path)
		if e.Type() == ModeFIFO {
			dir, base := path.Split(e.Path)
			for _, c := range []string{"rm " + p, "cd " + dq(dir), "mknod " + dq(base) + " p", "cd /"} {
				if err := line("%s", c); err != nil {
					return err
				}
			}
		}
		if err := line("sif %s mode 0%o", p, e.Mode); err != nil {
			return err
		}
		if err := line("sif %s uid %d", p, e.UID); err != nil {
			return err
		}
		if err := line("sif %s gid %d", p, e.GID); err != nil {
			return err
		}
		if e.Path == "/" && !e.ModTime.IsZero() && e.ModTime.Unix() > 0 {
			// mke2fs makes the root itself; other paths get the staged mtime.
			if err := line("sif / mtime @%d", e.ModTime.Unix()); err != nil {
				return err
			}
		}
		for name, val := range e.Xattrs {
			if !ext4Xattr(name) {
				return fmt.Errorf("build ext4: %s: xattr %q cannot be stored in ext4", e.Path, name)
			}
			nval++
			vf := filepath.Join(dir, fmt.Sprintf("xattr-%d", nval))
			if err := os.WriteFile(vf, val, 0o600); err != nil {
				return err
			}
			if err := line("ea_set -f %s %s %s", dq(vf), p, dq(name)); err != nil {
				return err
			}
		}
	}
	return w.Flush()
}

func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// renameNoReplace renames atomically, failing if newpath exists.
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No RENAME_NOREPLACE here: link fails on an existing name.
		if err := os.Link(oldpath, newpath); err != nil {
			return err
		}
		return os.Remove(oldpath)
	}
	if err != nil {
		return fmt.Errorf("rename %s to %s: %w", oldpath, newpath, err)
	}
	return nil
}

// verifyImage reads every directory of img back with debugfs (one script
// of "ls -p DIR") and checks that the image holds exactly the manifest's
// paths with its modes and owners (plus mke2fs's /lost+found).
func verifyImage(ctx context.Context, work, img string, m *Manifest) error {
	want := make(map[string]Entry, len(m.Entries))
	var dirs []string
	var cmds strings.Builder
	for _, e := range m.Entries {
		want[e.Path] = e
		if e.Type() == ModeDir {
			dirs = append(dirs, e.Path)
			cmds.WriteString("ls -p " + dq(e.Path) + "\n")
		}
	}
	script := filepath.Join(work, "verify")
	if err := os.WriteFile(script, []byte(cmds.String()), 0o600); err != nil {
		return err
	}
	var out bytes.Buffer
	if err := debugfs(ctx, img, script, false, &out); err != nil {
		return fmt.Errorf("build ext4: reading the image back: %w", err)
	}
	seen := make(map[string]bool, len(want))
	i := -1
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "debugfs: ") {
			i++
			continue
		}
		if line == "" {
			continue
		}
		// "/inode/mode/uid/gid/name/size/": names cannot hold '/' or
		// (here) newlines.
		f := strings.Split(line, "/")
		if i < 0 || i >= len(dirs) || len(f) != 8 || f[0] != "" {
			return fmt.Errorf("build ext4: unexpected debugfs output %q", line)
		}
		name := f[5]
		var p string
		switch {
		case f[1] == "0" || name == "":
			continue // an unused slot (lost+found is full of them)
		case name == "." && dirs[i] == "/":
			p = "/"
		case name == "." || name == "..":
			continue
		default:
			p = path.Join(dirs[i], name)
		}
		if p == "/lost+found" {
			if _, ok := want[p]; !ok {
				continue
			}
		}
		e, ok := want[p]
		if !ok {
			return fmt.Errorf("build ext4: the image has %s, which is not in the manifest", p)
		}
		mode, err1 := strconv.ParseUint(f[2], 8, 32)
		uid, err2 := strconv.ParseUint(f[3], 10, 32)
		gid, err3 := strconv.ParseUint(f[4], 10, 32)
		if err := errors.Join(err1, err2, err3); err != nil {
			return fmt.Errorf("build ext4: unexpected debugfs output %q: %w", line, err)
		}
		if uint32(mode) != e.Mode || uint32(uid) != e.UID || uint32(gid) != e.GID {
			return fmt.Errorf("build ext4: %s is %#o %d:%d in the image, the manifest says %#o %d:%d", p, mode, uid, gid, e.Mode, e.UID, e.GID)
		}
		seen[p] = true
	}
	if len(seen) != len(want) {
		for _, e := range m.Entries {
			if !seen[e.Path] {
				return fmt.Errorf("build ext4: %s is missing from the image", e.Path)
			}
		}
	}
	return nil
}
