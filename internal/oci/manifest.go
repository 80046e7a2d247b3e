package oci

import (
	"fmt"
	"time"
)

// File type bits of Entry.Mode (the st_mode / ext4 i_mode encoding).
const (
	ModeType    = 0o170000
	ModeDir     = 0o040000
	ModeRegular = 0o100000
	ModeSymlink = 0o120000
	ModeFIFO    = 0o010000
	ModeSetuid  = 0o4000
	ModeSetgid  = 0o2000
	ModeSticky  = 0o1000
)

// Manifest records what an unprivileged extraction cannot put on disk:
// the real owner, exact mode and xattrs of every path in the staging
// directory, and which paths stand in for FIFOs. BuildExt4 applies it to
// the ext4 image. It marshals to JSON.
type Manifest struct {
	// Entries lists every path in the staging directory, "/" first,
	// sorted as a directory walk visits them.
	Entries []Entry `json:"entries"`
	// Notes lists what Flatten skipped or changed (device nodes, unknown
	// entry types, xattrs ext4 cannot hold, names debugfs cannot address).
	Notes []Note `json:"notes,omitempty"`
}

// Entry is the intended metadata of one path in the image.
type Entry struct {
	// Path in the image: "/" or "/etc/passwd" (never a trailing slash).
	Path string `json:"path"`
	// Mode is the full st_mode: type bits (ModeDir, ModeRegular,
	// ModeSymlink, ModeFIFO), setuid/setgid/sticky and permissions,
	// e.g. 0o104755 for a setuid-root binary.
	Mode uint32 `json:"mode"`
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	// ModTime from the layer (restored on the staged file too).
	ModTime time.Time `json:"mtime"`
	// Xattrs from the layer's PAX records (user.*, trusted.*, security.*,
	// system.posix_acl_*), values raw as getxattr returns them.
	Xattrs map[string][]byte `json:"xattrs,omitempty"`
}

// Type returns the file type bits of the entry's mode.
func (e Entry) Type() uint32 { return e.Mode & ModeType }

// Note is something Flatten skipped or altered, with the entry it concerns.
type Note struct {
	Layer  int    `json:"layer"` // 1 = base layer
	Path   string `json:"path"`  // the entry name as it appears in the layer
	Reason string `json:"reason"`
}

func (n Note) String() string {
	return fmt.Sprintf("layer %d: %s: %s", n.Layer, n.Path, n.Reason)
}
