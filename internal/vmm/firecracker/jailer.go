package firecracker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"banger/internal/vmm"
)

// JailerOptions runs Firecracker under its jailer: a chroot per VM, an
// unprivileged uid/gid, optionally a network namespace. The jailer itself
// must run as root.
//
// The jailer builds <ChrootBase>/<exec name>/<id>/root, copies the
// Firecracker binary into it, creates /dev/kvm and /dev/net/tun there,
// chowns the root to UID:GID, pivots into it, drops privileges and execs
// Firecracker in the same process (banger does not pass --daemonize or
// --new-pid-ns, so the pid banger records stays the Firecracker pid and its
// stdout stays the console log). Everything Firecracker opens by path must
// therefore be inside the chroot: see stageFiles.
type JailerOptions struct {
	Binary     string // jailer binary; default "jailer" from PATH
	ChrootBase string // --chroot-base-dir; default /srv/jailer
	UID, GID   int    // the unprivileged identity Firecracker runs as
	// NetNS, when set, is the network namespace the jailer joins: a path
	// (/var/run/netns/NAME) or a bare NAME under /var/run/netns. The VM's tap
	// devices must live in that namespace.
	NetNS string
}

const defaultChrootBase = "/srv/jailer"

// jailRunDir is the directory, as seen inside the jail, holding Firecracker's
// API socket, its log file and the vsock socket. It is the jailed
// counterpart of Spec.RunDir; banger creates it owned by UID:GID.
const jailRunDir = "/run"

// vsockName is the vsock socket's name in jailRunDir. The daemon reaches it
// through a symlink at Spec.GuestChannel.
const vsockName = "vsock.sock"

// unixPathMax is the size of sockaddr_un.sun_path, including the NUL.
const unixPathMax = 108

// jailLayout is where the jailer puts one VM's chroot.
type jailLayout struct {
	ID       string // jailer --id (validated: [A-Za-z0-9-], at most 64)
	ExecFile string // absolute path of the Firecracker binary (--exec-file)
	Base     string // --chroot-base-dir
	Dir      string // <ChrootBase>/<exec name>/<id>; removed when the VM is cleaned up
	Root     string // <Dir>/root: "/" as the jailed Firecracker sees it
}

// newJailLayout computes the chroot layout for id. execFile must be the
// absolute path of the Firecracker binary; its name must contain
// "firecracker" (the jailer enforces this).
func newJailLayout(o JailerOptions, execFile, id string) (jailLayout, error) {
	if !filepath.IsAbs(execFile) {
		return jailLayout{}, fmt.Errorf("jailer: exec file %q must be an absolute path", execFile)
	}
	name := filepath.Base(execFile)
	if !strings.Contains(name, "firecracker") {
		return jailLayout{}, fmt.Errorf("jailer: exec file name %q must contain \"firecracker\" (the jailer refuses other names)", name)
	}
	if !validInstanceID(id) {
		return jailLayout{}, fmt.Errorf("jailer: invalid id %q: use letters, digits and '-', at most 64", id)
	}
	base := o.ChrootBase
	if base == "" {
		base = defaultChrootBase
	}
	if !filepath.IsAbs(base) {
		return jailLayout{}, fmt.Errorf("jailer: chroot base %q must be an absolute path", base)
	}
	base = filepath.Clean(base)
	dir := filepath.Join(base, name, id)
	l := jailLayout{ID: id, ExecFile: execFile, Base: base, Dir: dir, Root: filepath.Join(dir, "root")}
	if sock := l.HostPath(filepath.Join(jailRunDir, apiSocketName)); len(sock) >= unixPathMax {
		return jailLayout{}, fmt.Errorf("jailer: API socket path %s is %d bytes, longer than a Unix socket allows (%d); use a shorter chroot base or VM name", sock, len(sock), unixPathMax-1)
	}
	return l, nil
}

// HostPath maps a path as seen inside the jail to the host path.
func (l jailLayout) HostPath(jailPath string) string {
	return filepath.Join(l.Root, filepath.Clean("/"+jailPath))
}

// APISocket is the host path of the jailed Firecracker's API socket.
func (l jailLayout) APISocket() string { return l.HostPath(filepath.Join(jailRunDir, apiSocketName)) }

// jailIDFromSocket recovers the jailer id from a host API socket path built
// by jailLayout.APISocket, or "" when sock is not such a path.
func jailIDFromSocket(sock string) string {
	suffix := string(filepath.Separator) + filepath.Join("root", jailRunDir, apiSocketName)
	dir, ok := strings.CutSuffix(filepath.Clean(sock), suffix)
	if !ok {
		return ""
	}
	id := filepath.Base(dir)
	if !validInstanceID(id) {
		return ""
	}
	return id
}

// jailerArgv is the jailer command line: the jailer's own flags, then "--"
// and the arguments forwarded to Firecracker (the jailer adds --id itself).
func jailerArgv(o JailerOptions, l jailLayout) []string {
	bin := o.Binary
	if bin == "" {
		bin = "jailer"
	}
	argv := []string{bin,
		"--id", l.ID,
		"--exec-file", l.ExecFile,
		"--uid", strconv.Itoa(o.UID),
		"--gid", strconv.Itoa(o.GID),
		"--chroot-base-dir", l.Base,
	}
	if ns := netnsPath(o.NetNS); ns != "" {
		argv = append(argv, "--netns", ns)
	}
	return append(argv, "--", "--api-sock", filepath.Join(jailRunDir, apiSocketName))
}

func netnsPath(ns string) string {
	if ns == "" || strings.Contains(ns, "/") {
		return ns
	}
	return filepath.Join("/var/run/netns", ns)
}

// stageKind says how one path is put into the chroot.
type stageKind int

const (
	stageDir  stageKind = iota // mkdir, chown to UID:GID
	stageFile                  // create empty, chown to UID:GID (Firecracker's log)
	stageLink                  // hard link a host file (or mknod a host block device)
)

func (k stageKind) String() string {
	return [...]string{"dir", "file", "link"}[k]
}

// stageStep is one entry of the staging plan.
type stageStep struct {
	Kind     stageKind
	Src      string // host source (stageLink only)
	JailPath string // path as Firecracker sees it
	Dst      string // host path inside the chroot
	// Writable entries are chowned to UID:GID. Read-only links are not:
	// chowning a hard link chowns the shared inode, which would hand a base
	// image or kernel shared by several VMs to one jailed VMM. They must
	// already be readable by UID:GID.
	Writable bool
}

// stageFiles plans what must be put into the chroot before the jailer runs,
// and returns spec rewritten with the paths the jailed Firecracker must be
// given over the API. Kernel, initrd and drives are hard linked under fixed
// names (block devices get a device node instead: /dev/mapper/... cannot be
// hard linked across filesystems); jailRunDir is created for the API
// socket, the log file and the vsock socket.
func stageFiles(l jailLayout, spec vmm.Spec) ([]stageStep, vmm.Spec) {
	jailed := spec
	jailed.RunDir = jailRunDir
	jailed.Drives = append([]vmm.Drive(nil), spec.Drives...)
	jailed.NICs = append([]vmm.NIC(nil), spec.NICs...)

	steps := []stageStep{
		{Kind: stageDir, JailPath: jailRunDir, Writable: true},
		{Kind: stageFile, JailPath: filepath.Join(jailRunDir, logFileName), Writable: true},
	}
	link := func(src, jailPath string, writable bool) string {
		steps = append(steps, stageStep{Kind: stageLink, Src: src, JailPath: jailPath, Writable: writable})
		return jailPath
	}
	jailed.Kernel = link(spec.Kernel, "/kernel", false)
	if spec.Initrd != "" {
		jailed.Initrd = link(spec.Initrd, "/initrd", false)
	}
	for i, d := range spec.Drives {
		jailed.Drives[i].Path = link(d.Path, "/drive-"+d.ID, !d.ReadOnly)
	}
	if spec.GuestChannel != "" {
		jailed.GuestChannel = filepath.Join(jailRunDir, vsockName)
	}
	for i := range steps {
		steps[i].Dst = l.HostPath(steps[i].JailPath)
	}
	return steps, jailed
}

// stage carries out a staging plan. It expects l.Dir not to exist (a stale
// jail is removed by the caller first).
func stage(l jailLayout, steps []stageStep, uid, gid int) error {
	if err := os.MkdirAll(l.Root, 0o755); err != nil {
		return fmt.Errorf("jailer: create chroot: %w", err)
	}
	for _, s := range steps {
		if err := stageOne(s, uid, gid); err != nil {
			return fmt.Errorf("jailer: stage %s %s: %w", s.Kind, s.JailPath, err)
		}
	}
	return nil
}

func stageOne(s stageStep, uid, gid int) error {
	if err := os.MkdirAll(filepath.Dir(s.Dst), 0o755); err != nil {
		return err
	}
	switch s.Kind {
	case stageDir:
		if err := os.Mkdir(s.Dst, 0o750); err != nil {
			return err
		}
	case stageFile:
		f, err := os.OpenFile(s.Dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
		if err != nil {
			return err
		}
		f.Close()
	case stageLink:
		fi, err := os.Stat(s.Src)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsRegular():
			if err := os.Link(s.Src, s.Dst); err != nil {
				if errors.Is(err, syscall.EXDEV) {
					return fmt.Errorf("%s is on another filesystem than the chroot base; hard links cannot cross filesystems: %w", s.Src, err)
				}
				return err
			}
			if !s.Writable {
				return checkReadable(fi, s.Src, uid, gid)
			}
		case fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0:
			st := fi.Sys().(*syscall.Stat_t)
			mode := uint32(unix.S_IFBLK | 0o600)
			if !s.Writable {
				mode = unix.S_IFBLK | 0o400
			}
			if err := unix.Mknod(s.Dst, mode, int(st.Rdev)); err != nil {
				return fmt.Errorf("mknod for block device %s: %w", s.Src, err)
			}
			// A device node in the chroot is its own inode: chowning it is safe.
			return os.Chown(s.Dst, uid, gid)
		default:
			return fmt.Errorf("%s is neither a regular file nor a block device", s.Src)
		}
	}
	if s.Writable {
		return os.Chown(s.Dst, uid, gid)
	}
	return nil
}

// checkReadable reports an error when uid:gid cannot read a file by its
// permission bits (a read-only image that banger does not chown).
func checkReadable(fi fs.FileInfo, path string, uid, gid int) error {
	st := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	switch {
	case int(st.Uid) == uid && perm&0o400 != 0,
		int(st.Gid) == gid && perm&0o040 != 0,
		perm&0o004 != 0:
		return nil
	}
	return fmt.Errorf("%s (mode %v, owner %d:%d) is not readable by the jail user %d:%d", path, perm, st.Uid, st.Gid, uid, gid)
}
