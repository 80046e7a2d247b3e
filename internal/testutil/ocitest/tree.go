package ocitest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Attr is the exact mode (type bits included) and owner of a path in an
// ext4 image, as debugfs reports them.
type Attr struct {
	Mode     uint32
	UID, GID int
}

// ExtractExt4 dumps an ext4 image's tree into dir without mounting
// (debugfs rdump) and returns every path's exact mode and owner, read back
// with one batched debugfs `ls -p` per directory (rdump's chown after
// chmod drops setuid bits, and only root keeps owners).
func ExtractExt4(t testing.TB, img, dir string) map[string]Attr {
	t.Helper()
	if out, err := exec.Command("debugfs", "-R", "rdump / "+dir, img).CombinedOutput(); err != nil {
		t.Fatalf("debugfs rdump: %v %s", err, out)
	}
	var script bytes.Buffer
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			fmt.Fprintf(&script, "ls -p \"/%s\"\n", strings.TrimPrefix(rel, "."))
		}
		return nil
	})
	cmd := exec.Command("debugfs", "-f", "-", img)
	cmd.Stdin = &script
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs ls: %v", err)
	}
	attrs := map[string]Attr{}
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if d, ok := strings.CutPrefix(line, "debugfs: ls -p "); ok {
			cur = strings.Trim(d, "\"")
			continue
		}
		// /inode/mode/uid/gid/name/size/
		f := strings.Split(line, "/")
		if len(f) < 8 || f[5] == "." || f[5] == ".." {
			continue
		}
		mode, _ := strconv.ParseUint(f[2], 8, 32)
		uid, _ := strconv.Atoi(f[3])
		gid, _ := strconv.Atoi(f[4])
		attrs[filepath.Join(cur, f[5])] = Attr{uint32(mode), uid, gid}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return attrs
}

// TreeLayer is a gzip layer (fast compression) streaming dir as a tar,
// with modes and owners from attrs where listed (device nodes, sockets and
// FIFOs are left out). The stream is the same at every read.
func TreeLayer(t testing.TB, dir string, attrs map[string]Attr) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(writeTree(tar.NewWriter(pw), dir, attrs)) }()
		return pr, nil
	}, tarball.WithCompressionLevel(1))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func writeTree(tw *tar.Writer, dir string, attrs map[string]Attr) error {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.IsDir(), fi.Mode().IsRegular():
		default:
			return nil
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name, hdr.Format, hdr.Uname, hdr.Gname = rel, tar.FormatPAX, "", ""
		// Nothing that changes between reads (digest, diff ID, upload).
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		if a, ok := attrs["/"+filepath.ToSlash(rel)]; ok {
			hdr.Mode, hdr.Uid, hdr.Gid = int64(a.Mode&0o7777), a.UID, a.GID
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
