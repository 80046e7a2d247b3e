package sysinstall

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"banger/internal/paths"
)

// MetaFile is where the install metadata lives (inside Root); paths.Resolve
// reads its owner to give that user the system layout.
const MetaFile = paths.InstallMetadataFile

// Metadata records an install: what it wrote and for whom. Paths are as
// seen on the installed system (without the Root prefix).
type Metadata struct {
	// Version is the banger version that installed.
	Version     string    `json:"version"`
	InstalledAt time.Time `json:"installed_at"`
	// Owner is the user the daemon runs as; only it may use the helper.
	Owner    string `json:"owner"`
	OwnerUID int    `json:"owner_uid"`
	OwnerGID int    `json:"owner_gid"`
	BinDir   string `json:"bin_dir"`
	// Files are the files install wrote, in order, with their content hash.
	Files []File `json:"files"`
	// Dirs are the directories install created, in order (parents first).
	Dirs []string `json:"dirs"`
	// PolicyFile is the root helper's policy.
	PolicyFile string `json:"policy_file"`
	// DaemonSocket and HelperSocket are the two services' sockets.
	DaemonSocket string `json:"daemon_socket"`
	HelperSocket string `json:"helper_socket"`
	// StateDirs are removed by `uninstall --purge`.
	StateDirs []string `json:"state_dirs"`
	// Units are the unit names written.
	Units []string `json:"units"`
	// Systemd tells whether systemd was running at install; Enabled
	// whether install enabled and started the units.
	Systemd bool `json:"systemd"`
	Enabled bool `json:"enabled"`
}

// File is one file install wrote.
type File struct {
	Path   string      `json:"path"`
	SHA256 string      `json:"sha256"`
	Mode   os.FileMode `json:"mode"`
}

// ReadMetadata reads the install metadata below root.
func ReadMetadata(root string) (Metadata, error) {
	var m Metadata
	b, err := os.ReadFile(filepath.Join(root, MetaFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", filepath.Join(root, MetaFile), err)
	}
	return m, nil
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
