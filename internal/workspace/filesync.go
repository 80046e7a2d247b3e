package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// SyncEntry is one [[file_sync]] item: a host file or directory copied to
// a path under the guest user's home.
type SyncEntry struct {
	// Host is an absolute host path or one starting with "~/" (the host
	// user's home). A symlink here is followed; symlinks inside a
	// directory are copied as symlinks.
	Host string `toml:"host"`
	// Guest is "~/…", a path relative to the guest home, or an absolute
	// path under it. Empty: the same place relative to the home as Host
	// (which must then start with "~/").
	Guest string `toml:"guest"`
}

// SyncOptions control FileSync.
type SyncOptions struct {
	// HostHome expands "~" in host paths; the current user's home when
	// empty. A daemon syncing for a user passes that user's home.
	HostHome string
	// GuestHome is the guest user's home, "/root" when empty. Every
	// destination must be strictly inside it.
	GuestHome string
	// Progress, if set, receives bytes sent (phase "files").
	Progress func(Progress)
}

// FileSync copies entries into the guest in one tar stream, keeping modes
// and merging into existing directories. A host path that does not exist is
// skipped with a warning; an invalid entry is an error and nothing is sent.
func FileSync(ctx context.Context, g Guest, entries []SyncEntry, opts SyncOptions) (warnings []string, err error) {
	guestHome := opts.GuestHome
	if guestHome == "" {
		guestHome = "/root"
	}
	if !path.IsAbs(guestHome) || path.Clean(guestHome) == "/" {
		return nil, fmt.Errorf("file_sync: guest home %q must be an absolute directory other than /", guestHome)
	}
	guestHome = path.Clean(guestHome)
	hostHome := opts.HostHome
	if hostHome == "" {
		if hostHome, err = os.UserHomeDir(); err != nil {
			return nil, fmt.Errorf("file_sync: %w", err)
		}
	}

	type item struct {
		host  string      // resolved host path
		guest string      // absolute guest path
		fi    fs.FileInfo // of host, symlinks followed
	}
	var items []item
	for _, e := range entries {
		host, guest, err := syncPaths(e, hostHome, guestHome)
		if err != nil {
			return nil, err
		}
		real, err := filepath.EvalSymlinks(host)
		if errors.Is(err, fs.ErrNotExist) {
			warnings = append(warnings, fmt.Sprintf("file_sync: %s does not exist on the host; skipped", e.Host))
			continue
		}
		if err != nil {
			return warnings, fmt.Errorf("file_sync: %s: %w", e.Host, err)
		}
		fi, err := os.Stat(real)
		if err != nil {
			return warnings, fmt.Errorf("file_sync: %s: %w", e.Host, err)
		}
		if !fi.IsDir() && !fi.Mode().IsRegular() {
			warnings = append(warnings, fmt.Sprintf("file_sync: %s is not a file or directory; skipped", e.Host))
			continue
		}
		items = append(items, item{host: real, guest: guest, fi: fi})
	}
	if len(items) == 0 {
		return warnings, nil
	}

	parentSet := map[string]bool{}
	for _, it := range items {
		parentSet[path.Dir(it.guest)] = true
	}
	parents := make([]string, 0, len(parentSet))
	for p := range parentSet {
		parents = append(parents, p)
	}
	sort.Strings(parents)

	var total int64
	p := Progress{Phase: "files"}
	count := func(n int64) {
		total += n
		if opts.Progress != nil {
			p.Bytes = total
			opts.Progress(p)
		}
	}
	var skipped []string
	argv := shArgv(`mkdir -p -- "$@" && exec tar -x -p --no-same-owner -f - -C /`, parents...)
	err = streamTo(ctx, g, "file_sync", argv, nil, func(w io.Writer) error {
		snd := newTarSender(w, count)
		for _, it := range items {
			name := strings.TrimPrefix(it.guest, "/")
			if !it.fi.IsDir() {
				if err := snd.file(name, it.host, it.host); err != nil {
					return err
				}
				continue
			}
			err := filepath.WalkDir(it.host, func(abs string, d fs.DirEntry, err error) error {
				if err != nil {
					return fmt.Errorf("file_sync: %w", err)
				}
				rel, err := filepath.Rel(it.host, abs)
				if err != nil {
					return err
				}
				tname := name
				if rel != "." {
					tname = name + "/" + filepath.ToSlash(rel)
				}
				fi, err := d.Info()
				if err != nil {
					return fmt.Errorf("file_sync: %w", err)
				}
				e, err := entryFor(rel, abs, fi)
				if err != nil {
					return err
				}
				if e.Kind == kindSpecial {
					skipped = append(skipped, abs)
					return nil
				}
				return snd.entry(tname, abs, e)
			})
			if err != nil {
				return err
			}
		}
		if len(snd.vanish) > 0 {
			skipped = append(skipped, snd.vanish...)
		}
		return snd.close()
	})
	for _, s := range skipped {
		warnings = append(warnings, fmt.Sprintf("file_sync: %s is not a regular file, directory or symlink (or vanished); skipped", s))
	}
	return warnings, err
}

// syncPaths resolves an entry to an absolute host path and an absolute
// guest path strictly inside guestHome.
func syncPaths(e SyncEntry, hostHome, guestHome string) (string, string, error) {
	host := e.Host
	switch {
	case host == "":
		return "", "", errors.New("file_sync: an entry has no host path")
	case host == "~":
		host = hostHome
	case strings.HasPrefix(host, "~/"):
		host = filepath.Join(hostHome, host[2:])
	case !filepath.IsAbs(host):
		return "", "", fmt.Errorf("file_sync: host path %q must be absolute or start with ~/", e.Host)
	}
	g := e.Guest
	if g == "" {
		if !strings.HasPrefix(e.Host, "~/") {
			return "", "", fmt.Errorf("file_sync: %q needs a guest path (only ~/ host paths map to the guest home by themselves)", e.Host)
		}
		g = e.Host
	}
	switch {
	case g == "~":
		g = guestHome
	case strings.HasPrefix(g, "~/"):
		g = guestHome + "/" + g[2:]
	case !path.IsAbs(g):
		g = guestHome + "/" + g
	}
	g = path.Clean(g)
	if !strings.HasPrefix(g, guestHome+"/") {
		return "", "", fmt.Errorf("file_sync: guest path %q must be inside %s (and not %s itself)", e.Guest, guestHome, guestHome)
	}
	return filepath.Clean(host), g, nil
}
