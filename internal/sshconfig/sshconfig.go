// Package sshconfig lets the system OpenSSH client reach banger VMs by name
// (`ssh NAME.vm`). It owns two things:
//
//   - a banger-owned client config file (Render) with one `Host *.vm` block
//     that uses banger's key and banger's known_hosts, and reaches the guest
//     through `banger vm ssh-proxy` (so it works without host DNS);
//   - a marker-fenced `Include` of that file at the top of the user's
//     ~/.ssh/config (Install, Uninstall). Install is idempotent and
//     Uninstall restores the user's file byte for byte, deleting it when
//     Install created it. The user's known_hosts is never touched.
package sshconfig

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	beginMarker        = "# >>> banger ssh-config >>> (managed by `banger ssh-config`; remove with `banger ssh-config --uninstall`)\n"
	beginMarkerCreated = "# >>> banger ssh-config >>> (managed by `banger ssh-config`, which created this file; remove with `banger ssh-config --uninstall`)\n"
	endMarker          = "# <<< banger ssh-config <<<\n"
)

// Files names what the banger-owned config points at.
type Files struct {
	Banger     string // absolute path of the banger CLI (for ProxyCommand)
	KeyFile    string // the daemon's private key
	KnownHosts string // banger's known_hosts (keys pinned as NAME.vm)
}

// Render returns the banger-owned client config.
func Render(f Files) string {
	return fmt.Sprintf(`# Written by banger ssh-config; rewritten on each install.
Host *.vm
	User root
	IdentityFile %s
	IdentitiesOnly yes
	UserKnownHostsFile %s
	StrictHostKeyChecking yes
	ProxyCommand %s vm ssh-proxy %%h
`, quote(f.KeyFile), quote(f.KnownHosts), quote(f.Banger))
}

// quote quotes a path for ssh_config when it needs it.
func quote(s string) string {
	if strings.ContainsAny(s, " \t\"") {
		return strconv.Quote(s)
	}
	return s
}

// Install writes include (the banger-owned file's content) to includePath
// and puts a fenced Include of it at the top of userConfig (creating the
// file and its 0700 directory if needed). It reports whether userConfig
// changed.
func Install(userConfig, includePath, include string) (bool, error) {
	if err := writeAtomic(includePath, []byte(include), 0o600); err != nil {
		return false, err
	}
	userConfig = followLink(userConfig)
	old, err := os.ReadFile(userConfig)
	created := errors.Is(err, os.ErrNotExist)
	if err != nil && !created {
		return false, err
	}
	rest, had, err := strip(old)
	if err != nil {
		return false, fmt.Errorf("%s: %w", userConfig, err)
	}
	begin := beginMarker
	if created || (had && bytes.HasPrefix(old, []byte(beginMarkerCreated))) {
		begin = beginMarkerCreated
	}
	// Include must come before any Host block, or it applies only inside it.
	block := begin + "Include " + quote(includePath) + "\n" + endMarker
	next := append([]byte(block), rest...)
	if bytes.Equal(next, old) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(userConfig), 0o700); err != nil {
		return false, err
	}
	mode := os.FileMode(0o600)
	if st, err := os.Stat(userConfig); err == nil {
		mode = st.Mode().Perm()
	}
	return true, writeAtomic(userConfig, next, mode)
}

// Uninstall removes the fenced block from userConfig (deleting the file
// when Install created it and nothing else was added) and removes
// includePath. It reports whether userConfig changed.
func Uninstall(userConfig, includePath string) (bool, error) {
	if err := os.Remove(includePath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	userConfig = followLink(userConfig)
	old, err := os.ReadFile(userConfig)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	rest, had, err := strip(old)
	if err != nil {
		return false, fmt.Errorf("%s: %w", userConfig, err)
	}
	if !had {
		return false, nil
	}
	if len(rest) == 0 && bytes.HasPrefix(old, []byte(beginMarkerCreated)) {
		return true, os.Remove(userConfig)
	}
	st, err := os.Stat(userConfig)
	if err != nil {
		return false, err
	}
	return true, writeAtomic(userConfig, rest, st.Mode().Perm())
}

// strip removes banger's fenced block from the start of b. A block found
// anywhere else means the file was edited by hand: refuse rather than guess.
func strip(b []byte) (rest []byte, had bool, err error) {
	for _, begin := range []string{beginMarker, beginMarkerCreated} {
		if bytes.HasPrefix(b, []byte(begin)) {
			end := bytes.Index(b, []byte(endMarker))
			if end < 0 {
				return nil, false, errors.New("banger's block has no end marker; fix it by hand")
			}
			return b[end+len(endMarker):], true, nil
		}
	}
	if bytes.Contains(b, []byte("# >>> banger ssh-config >>>")) {
		return nil, false, errors.New("banger's block is not at the top of the file (moved by hand?); move it back or remove it by hand")
	}
	return b, false, nil
}

// followLink returns the file a symlinked ~/.ssh/config points at (dotfile
// managers link it), so the link itself survives the rewrite.
func followLink(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		return p
	}
	return path
}

// writeAtomic replaces path with data through a temporary file in the same
// directory, so a crash leaves the old or the new file, never half of one.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
